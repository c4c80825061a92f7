"""Sandboxed jinja2 templates per locale, the locale fallback chain, and the exact bytes of each message."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError

from ..campaign.model import Campaign
from ..errors import TemplateError
from . import plan, sandbox
from .locales import FALLBACK_LOCALE, PARTS, RTL_LANGUAGES, VARIANTS, _date_filter, split_version, version_order
from .sandbox import Namespace
from .snapshot import SHIPPED_TEMPLATES, Snapshot, _read_sources, _SnapshotLoader, template_dir


@dataclass(frozen=True)
class Rendered:
    locale: str  # the template locale used
    subject: str
    text: str
    html: str
    variant: str = ""  # the jurisdiction variant used; "" for the default

    @property
    def version(self) -> str:
        return f"{self.variant}/{self.locale}" if self.variant else self.locale


class Undefined(jinja2.StrictUndefined):
    """StrictUndefined that says "campaign.support_phone is not defined" rather than "'dict object' has no attribute"."""

    @property
    def _undefined_message(self) -> str:
        label = getattr(self._undefined_obj, "label", None)
        if label and self._undefined_name is not None:
            return f"{label}.{self._undefined_name} is not defined"
        return str(super()._undefined_message)


def _where(exc: BaseException, roots: list[Path]) -> str:
    """The template file and line an exception was raised from (jinja2 puts them in the traceback)."""
    tb: TracebackType | None = exc.__traceback__
    found = ""
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if any(name.startswith(str(r)) for r in roots):
            found = f"{name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return found


class Templates:
    """One campaign's templates: campaign-local templates/<template>/ first, then the shipped ones."""

    def __init__(self, campaign: Campaign, shipped: Path = SHIPPED_TEMPLATES,
                 snapshot: Snapshot | None = None, plans: bool = True) -> None:
        """Reads every file the loader can reach, once, into an immutable snapshot (or takes `snapshot`, from
        another Templates' snapshot()). Everything renders from it and the approval fingerprint hashes it,
        whatever the files hold later: what is sent is what check, preview and approve saw (#24). `plans`
        False renders every recipient with jinja2 (tests compare the two)."""
        self.campaign = campaign
        self.roots = [p for p in (campaign.dir / "templates" / campaign.template, shipped / campaign.template) if template_dir(p)]
        if not self.roots:
            raise TemplateError(
                f"{campaign.file}: [campaign] template: no template {campaign.template!r} "
                f"(looked in {campaign.dir / 'templates'} and {shipped})")
        versions, self.sources = snapshot if snapshot is not None else (None, _read_sources(self.roots))
        self.timeout = campaign.send.render_timeout
        self.max_bytes = campaign.send.render_max_bytes
        self.loader = _SnapshotLoader(self.sources)
        self.env = sandbox.Sandbox(
            max_bytes=self.max_bytes,
            loader=self.loader,
            undefined=Undefined,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
            keep_trailing_newline=True,
        )
        self.env.filters["date"] = _date_filter
        self.versions = list(versions) if versions is not None else self._discover()
        self._variant_by_lower = {v.lower(): v for v in self.variants}
        self._by_lower = {v.lower(): v for v in self.versions}
        self._resolved: dict[tuple[str, str], str] = {}  # (locale, jurisdiction) -> version: asked once per message
        self._compiled: dict[str, tuple[jinja2.Template, jinja2.Template, jinja2.Template]] = {}
        self._vars: dict[str, Namespace] = {}
        self._plans: dict[str, plan.Plans | None] | None = {} if plans else None
        self._parse_trees: dict[str, tuple[nodes.Template, str]] = {}  # name -> (tree, file name)

    def _discover(self) -> list[str]:
        """Every version in the snapshot: "en" for the default variant's locales, "US-MA/en" for a variant's."""
        found: dict[str, set[str]] = {}
        for name in self.sources:
            *dirs, part = name.split("/")
            if dirs[:1] == [VARIANTS] and len(dirs) == 3:
                version = f"{dirs[1]}/{dirs[2]}"
            elif len(dirs) == 1 and dirs[0] != VARIANTS:
                version = dirs[0]
            else:
                continue
            if not any(d.startswith("_") for d in dirs):
                found.setdefault(version, set()).update([part] if part in PARTS else [])
        problems = [f"{self._dir(version)}: missing {', '.join(sorted(set(PARTS) - have))}"
                    for version, have in sorted(found.items()) if have != set(PARTS)]
        if problems:
            raise TemplateError("; ".join(problems), hint="every locale needs subject.txt, body.txt and body.html")
        if not any("/" not in v for v in found):
            raise TemplateError(f"{self.roots[0]}: no locales (expected directories such as en/ holding {', '.join(PARTS)})")
        return sorted(found, key=version_order)

    def _dir(self, version: str) -> Path:
        variant, locale = split_version(version)
        return self.roots[0] / (f"{VARIANTS}/{variant}/{locale}" if variant else locale)

    @staticmethod
    def _path(version: str, part: str) -> str:
        variant, locale = split_version(version)
        return f"{VARIANTS}/{variant}/{locale}/{part}" if variant else f"{locale}/{part}"

    @property
    def locales(self) -> list[str]:
        """The default variant's locales."""
        return [v for v in self.versions if "/" not in v]

    @property
    def variants(self) -> dict[str, list[str]]:
        """Variant name -> its locales."""
        out: dict[str, list[str]] = {}
        for v in self.versions:
            if "/" in v:
                variant, locale = split_version(v)
                out.setdefault(variant, []).append(locale)
        return out

    def variant_for(self, jurisdiction: str) -> str:
        """US-MA -> the US-MA variant, else a US variant, else the default ("")."""
        tag = jurisdiction.strip().lower()
        for candidate in (tag, tag.split("-")[0]):
            if candidate and candidate in self._variant_by_lower:
                return self._variant_by_lower[candidate]
        return ""

    def hashes(self) -> dict[str, str]:
        """SHA-256 of every file in the snapshot, by its name under the template: what the approval
        fingerprint covers and what `send_started` records as sent."""
        return {name: hashlib.sha256(src.encode("utf-8")).hexdigest() for name, (src, _) in self.sources.items()}

    def fingerprint(self) -> dict[str, str]:
        """Everything that shapes what a recipient reads, each part hashed: every file of the template snapshot
        (what the loop and the render processes render from), [variables], sender. What an approval covers
        (evidence.review), seeds are sent once for, and a send compares with other campaigns' (store.pgothers)."""
        c = self.campaign
        parts = {f"templates/{c.template}/{name}": h for name, h in self.hashes().items()}
        parts[f"{c.file.name} [variables]"] = _sha(json.dumps(c.variables, sort_keys=True, default=str, ensure_ascii=False))
        parts[f"{c.file.name} [campaign] from, reply_to, template, default_locale"] = _sha(
            json.dumps([c.sender, c.reply_to, c.template, c.default_locale]))
        if c.locale_map:  # who reads which version (a part of its own: approvals of campaigns without one stand)
            parts[f"{c.file.name} [campaign] locale_map"] = _sha(json.dumps(c.locale_map, sort_keys=True))
        return parts

    def by_version(self, samples: dict[tuple[str, str], dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """Store.samples() grouped by the version each (requested locale, jurisdiction) gets, in row order:
        how many get each version, who falls back into it, and a real recipient to render it for."""
        out: dict[str, list[dict[str, Any]]] = {}
        for (requested, juris), sample in sorted(samples.items(), key=lambda kv: kv[1]["row"]):
            out.setdefault(self.resolve(requested or self.campaign.default_locale, juris), []).append(sample)
        return out

    def snapshot(self) -> Snapshot:
        """The versions and every template's source and file name, as read once (picklable)."""
        return list(self.versions), self.sources

    def resolve(self, requested: str, jurisdiction: str = "") -> str:
        """The version a recipient gets: the variant of their jurisdiction (or the default), then within
        it the locale: exact tag (pt-BR) -> language (pt) -> campaign default -> en; [campaign] locale_map
        names another locale to try for a tag or a language before the default (pt -> pt-BR)."""
        if (requested, jurisdiction) in self._resolved:
            return self._resolved[requested, jurisdiction]
        variant = self.variant_for(jurisdiction) if jurisdiction else ""
        prefix = f"{variant}/" if variant else ""
        language = requested.split("-")[0]
        mapped = self.campaign.locale_map
        chain = [requested, mapped.get(requested.lower(), ""), language, mapped.get(language.lower(), ""),
                 self.campaign.default_locale, FALLBACK_LOCALE]
        for tag in chain:
            if tag and (prefix + tag).lower() in self._by_lower:
                self._resolved[requested, jurisdiction] = self._by_lower[(prefix + tag).lower()]
                return self._resolved[requested, jurisdiction]
        where = self.roots[0] / VARIANTS / variant if variant else self.roots[0]
        raise TemplateError(
            f"no template{f' in variant {variant!r}' if variant else ''} for locale {requested!r}, "
            f"nor for the default {self.campaign.default_locale!r} or {FALLBACK_LOCALE!r}",
            hint=f"add {where / self.campaign.default_locale}/ or set [campaign] default_locale to one of "
                 f"{', '.join(self.variants.get(variant, []) if variant else self.locales)}",
        )

    def _load(self, version: str) -> tuple[jinja2.Template, jinja2.Template, jinja2.Template]:
        if version not in self._compiled:
            try:
                subject, text, html = (self.env.get_template(self._path(version, p)) for p in PARTS)
                self._compiled[version] = (subject, text, html)
            except jinja2.TemplateSyntaxError as e:
                raise TemplateError(f"{e.filename}:{e.lineno}: template syntax error: {e.message}") from None
            except jinja2.TemplateNotFound as e:
                raise TemplateError(f"template {e.name!r} not found (looked in {', '.join(map(str, self.roots))})") from None
        return self._compiled[version]

    def load_all(self) -> list[str]:
        """Compiles every locale; returns every problem found (empty when all parse)."""
        problems = []
        for version in self.versions:
            try:
                self._load(version)
                self._trees(version)  # everything it includes, imports or extends exists
            except TemplateError as e:
                problems.append(str(e) + (f" ({e.hint})" if e.hint else ""))
        return problems

    def recipient_fields(self) -> set[str]:
        """Every `recipient.X` (or recipient['X']) any template uses, so columns can be checked up front."""
        used: set[str] = set()
        for name in self.sources:
            try:
                tree = self._parsed(name)[0]
            except jinja2.TemplateSyntaxError:
                continue  # reported by load_all
            for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
                if not isinstance(node, (nodes.Getattr, nodes.Getitem)):
                    continue  # find_all yields only these; the check tells the type checker
                if isinstance(node.node, nodes.Name) and node.node.name == "recipient":
                    if isinstance(node, nodes.Getattr):
                        used.add(node.attr)
                    elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                        used.add(node.arg.value)
        return used

    def _variables(self, locale: str) -> Namespace:
        """[variables] as one locale sees them: a [variables.<locale>] table (exact tag, then the
        language) overrides the shared values, so a translation never carries an English phrase."""
        if locale not in self._vars:
            shared = {k: v for k, v in self.campaign.variables.items() if not isinstance(v, dict)}
            tables = {k.lower(): v for k, v in self.campaign.variables.items() if isinstance(v, dict)}
            for tag in (locale.split("-")[0], locale):
                shared.update(tables.get(tag.lower(), {}))
            self._vars[locale] = Namespace("campaign", shared)
        return self._vars[locale]

    def render(self, version: str, recipient: dict[str, Any], today: dt.date | None = None) -> Rendered:
        """Renders one version for one recipient; any failure is a TemplateError naming file and line.
        Where the version has a render plan (plan.py), the text is the plan's, which is jinja2's."""
        variant, locale = split_version(version)
        today = today or self.campaign.today()  # the campaign's calendar, as the Date header and the deadline
        plans = self._plans_for(version)
        filled = plans.fill(recipient, today) if plans is not None else None
        if filled is None:
            filled = self._render(version, recipient, today)
            if plans is not None:
                plans.verify(recipient, today, filled)
        subject = " ".join(filled[0].split())
        if not subject:
            raise TemplateError(f"{self._dir(version) / 'subject.txt'}: renders to an empty subject")
        return Rendered(locale, subject, filled[1], filled[2], variant)

    def _render(self, version: str, recipient: dict[str, Any], today: dt.date) -> tuple[str, str, str]:
        """jinja2's rendering of the three parts (the subject not yet collapsed to one line)."""
        templates = self._load(version)
        locale = split_version(version)[1]
        ctx = {
            "recipient": Namespace("recipient", recipient),
            "campaign": self._variables(locale),
            "locale": locale,
            "today": today,
            "text_direction": "rtl" if locale.split("-")[0] in RTL_LANGUAGES else "ltr",
        }
        current = ""
        try:
            with sandbox.budget(self.timeout):
                out = []
                for t in templates:
                    current = t.filename or str(t.name)
                    out.append(sandbox.render(t, ctx, self.max_bytes))
                return out[0], out[1], out[2]
        except sandbox.BudgetExceeded as e:
            raise TemplateError(f"{_where(e, self.roots) or current}: {e}",
                                hint="a notice renders in milliseconds: look for loops or repetitions that grow with "
                                     "their input, or raise [send] render_timeout / render_max_bytes") from None
        except TemplateError as e:
            raise TemplateError(f"{_where(e, self.roots)}: {e}") from None
        except jinja2.UndefinedError as e:
            raise TemplateError(f"{_where(e, self.roots)}: {e.message}",
                                hint="add it to [variables] in campaign.toml (campaign.*) or as a recipients column "
                                     "(recipient.*)") from None
        except SecurityError as e:
            raise TemplateError(f"{_where(e, self.roots)}: refused by the sandbox: {e}") from None
        except jinja2.TemplateNotFound as e:  # a name computed at render time (a constant one is checked up front)
            raise TemplateError(f"{_where(e, self.roots)}: includes {e.name!r}, which is not a file of the template "
                                f"(looked in {', '.join(map(str, self.roots))})") from None
        except Exception as e:  # a template can raise anything its expressions do
            raise TemplateError(f"{_where(e, self.roots)}: {type(e).__name__}: {e}") from None

    def _plans_for(self, version: str) -> plan.Plans | None:
        """The version's render plans, or None when its templates use `recipient` beyond what a plan keeps."""
        if self._plans is None:
            return None
        if version not in self._plans:
            try:
                self._plans[version] = plan.Plans(plan.usage(self._trees(version)),
                                                  lambda r, today: self._render(version, r, today))
            except (plan.NotPlannable, jinja2.TemplateError, TemplateError):
                self._plans[version] = None
        return self._plans[version]

    def _trees(self, version: str) -> list[tuple[str, nodes.Template]]:
        """The parsed templates a version loads: its three parts and all they extend, include or import."""
        todo: list[tuple[str, str | None]] = [(self._path(version, p), None) for p in PARTS]
        seen: dict[str, nodes.Template] = {}
        while todo:
            name, by = todo.pop()
            if name in seen:
                continue
            try:
                seen[name], filename = self._parsed(name)
            except jinja2.TemplateNotFound:
                if by is None:
                    raise TemplateError(f"template {name!r} not found (looked in {', '.join(map(str, self.roots))})") from None
                raise TemplateError(
                    f"{by}: includes {name!r}, which is not a file of the template (looked for it in "
                    f"{' and '.join(str(r / name) for r in self.roots)})",
                    hint="a name in {% include %}, {% import %} or {% extends %} is a path from the template's root, not "
                         f"from the including file: a footer shared by every locale is {self.roots[0] / 'footer.txt'}, "
                         'included as {% include "footer.txt" %}') from None
            todo += [(ref, filename) for ref in plan.referenced(seen[name], filename)]
        return list(seen.items())

    def undefined_variables(self, version: str) -> list[str]:
        """Every `campaign.NAME` the version's templates (and all they extend, include or import) use that
        [variables] lacks for its locale, as "file:line: campaign.NAME is not defined": all at once, where
        rendering stops at the first. A name the templates test with `is defined` is theirs to handle."""
        have = self._variables(split_version(version)[1])
        out = set()
        for name, tree in self._trees(version):
            filename = self._parsed(name)[1]
            guarded = {t.node.attr for t in tree.find_all(nodes.Test)
                       if t.name == "defined" and isinstance(t.node, nodes.Getattr)}
            for node in tree.find_all(nodes.Getattr):
                if (isinstance(node.node, nodes.Name) and node.node.name == "campaign" and node.attr not in have
                        and node.attr not in guarded):
                    out.add((filename, node.lineno, node.attr))
        return [f"{f}:{line}: campaign.{attr} is not defined" for f, line, attr in sorted(out)]

    def _parsed(self, name: str) -> tuple[nodes.Template, str]:
        """A template's parse tree and file name, by its name under the template, parsed once: preflight
        reads each tree twice, for the columns it uses (recipient_fields) and for its render plan
        (_trees). Neither changes it; get_template parses its own copy, which jinja2's optimizer rewrites."""
        if name not in self._parse_trees:
            source, filename, _ = self.loader.get_source(self.env, name)
            self._parse_trees[name] = self.env.parse(source, name, filename), filename or name
        return self._parse_trees[name]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
