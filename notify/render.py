"""Sandboxed jinja2 templates per locale, the locale fallback chain, and the exact bytes of each message."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Iterable

import babel
import babel.dates
import jinja2
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from .campaign import Campaign
from .errors import TemplateError
from .recipients import recipient_token

PARTS = ("subject.txt", "body.txt", "body.html")
FALLBACK_LOCALE = "en"
RTL_LANGUAGES = {"ar", "he", "fa", "ur", "yi", "ps", "sd", "ug", "dv", "ku"}
SHIPPED_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@dataclass(frozen=True)
class Rendered:
    locale: str  # the template locale used
    subject: str
    text: str
    html: str


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


def message_id(campaign_id: str, key: str, domain: str) -> str:
    """Deterministic per (campaign, address): a resend after a crash carries the same ID."""
    digest = hashlib.sha256(f"{campaign_id}\0{key}".encode()).hexdigest()[:32]
    return f"<{campaign_id}.{digest}@{domain}>"


def babel_locale(tag: str) -> babel.Locale:
    try:
        return babel.Locale.parse(tag.replace("-", "_"))
    except (ValueError, babel.UnknownLocaleError):
        try:
            return babel.Locale.parse(tag.split("-")[0])
        except (ValueError, babel.UnknownLocaleError):
            return babel.Locale.parse(FALLBACK_LOCALE)


@jinja2.pass_context
def _date_filter(ctx: jinja2.runtime.Context, value: Any, format: str = "long") -> str:
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()  # a missing date is a missing variable, not a bad date
    if isinstance(value, str):
        try:
            value = dt.date.fromisoformat(value)
        except ValueError:
            raise TemplateError(f"the date filter got {value!r}, which is not a date (YYYY-MM-DD)") from None
    if isinstance(value, dt.datetime):
        return babel.dates.format_datetime(value, format=format, locale=babel_locale(ctx["locale"]))
    if isinstance(value, dt.date):
        return babel.dates.format_date(value, format=format, locale=babel_locale(ctx["locale"]))
    raise TemplateError(f"the date filter got {value!r}, which is not a date")


class Namespace(dict):  # type: ignore[type-arg]
    """`campaign` and `recipient` in templates: a dict that knows its name, for error messages."""

    def __init__(self, label: str, values: dict[str, Any]) -> None:
        super().__init__(values)
        self.label = label


class Undefined(jinja2.StrictUndefined):
    """StrictUndefined that says "campaign.support_phone is not defined" rather than "'dict object' has no attribute"."""

    @property
    def _undefined_message(self) -> str:
        label = getattr(self._undefined_obj, "label", None)
        if label and self._undefined_name is not None:
            return f"{label}.{self._undefined_name} is not defined"
        return super()._undefined_message  # type: ignore[no-any-return]


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

    def __init__(self, campaign: Campaign, shipped: Path = SHIPPED_TEMPLATES) -> None:
        self.campaign = campaign
        self.roots = [p for p in (campaign.dir / "templates" / campaign.template, shipped / campaign.template) if p.is_dir()]
        if not self.roots:
            raise TemplateError(
                f"{campaign.file}: [campaign] template: no template {campaign.template!r} "
                f"(looked in {campaign.dir / 'templates'} and {shipped})")
        self.env = ImmutableSandboxedEnvironment(
            loader=jinja2.FileSystemLoader([str(r) for r in self.roots]),
            undefined=Undefined,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
            keep_trailing_newline=True,
        )
        self.env.filters["date"] = _date_filter
        self.locales = self._discover()
        self._by_lower = {loc.lower(): loc for loc in self.locales}
        self._resolved: dict[str, str] = {}  # requested tag -> template locale: asked once per message
        self._compiled: dict[str, tuple[jinja2.Template, jinja2.Template, jinja2.Template]] = {}

    def _discover(self) -> list[str]:
        found: dict[str, set[str]] = {}
        for root in self.roots:
            for d in root.iterdir():
                if d.is_dir() and not d.name.startswith(("_", ".")):
                    found.setdefault(d.name, set()).update(p for p in PARTS if (d / p).is_file())
        problems = [f"{self.roots[0] / loc}: missing {', '.join(sorted(set(PARTS) - have))}"
                    for loc, have in sorted(found.items()) if have != set(PARTS)]
        if problems:
            raise TemplateError("; ".join(problems), hint="every locale needs subject.txt, body.txt and body.html")
        if not found:
            raise TemplateError(f"{self.roots[0]}: no locales (expected directories such as en/ holding {', '.join(PARTS)})")
        return sorted(found)

    def files(self) -> dict[str, Path]:
        """Every template file that shapes the content, by its name under the template (for hashing and review);
        a campaign-local file hides the shipped one of the same name, as the loader does."""
        seen: dict[str, Path] = {}
        for root in self.roots:
            for p in sorted(root.rglob("*")):
                rel = str(p.relative_to(root))
                if p.is_file() and p.suffix in (".txt", ".html") and rel not in seen:
                    seen[rel] = p
        return seen

    def resolve(self, requested: str) -> str:
        """Exact tag (pt-BR) -> language (pt) -> campaign default -> en."""
        if requested in self._resolved:
            return self._resolved[requested]
        chain = [requested, requested.split("-")[0], self.campaign.default_locale, FALLBACK_LOCALE]
        for tag in chain:
            if tag and tag.lower() in self._by_lower:
                self._resolved[requested] = self._by_lower[tag.lower()]
                return self._resolved[requested]
        raise TemplateError(
            f"no template for locale {requested!r}, nor for the default {self.campaign.default_locale!r} or {FALLBACK_LOCALE!r}",
            hint=f"add {self.roots[0] / self.campaign.default_locale}/ or set [campaign] default_locale to one of {', '.join(self.locales)}",
        )

    def _load(self, locale: str) -> tuple[jinja2.Template, jinja2.Template, jinja2.Template]:
        if locale not in self._compiled:
            try:
                self._compiled[locale] = tuple(self.env.get_template(f"{locale}/{p}") for p in PARTS)  # type: ignore[assignment]
            except jinja2.TemplateSyntaxError as e:
                raise TemplateError(f"{e.filename}:{e.lineno}: template syntax error: {e.message}") from None
            except jinja2.TemplateNotFound as e:
                raise TemplateError(f"template {e.name!r} not found (looked in {', '.join(map(str, self.roots))})") from None
        return self._compiled[locale]

    def load_all(self) -> list[str]:
        """Compiles every locale; returns every problem found (empty when all parse)."""
        problems = []
        for loc in self.locales:
            try:
                self._load(loc)
            except TemplateError as e:
                problems.append(str(e))
        return problems

    def recipient_fields(self) -> set[str]:
        """Every `recipient.X` (or recipient['X']) any template uses, so columns can be checked up front."""
        used: set[str] = set()
        for path in self.files().values():
            try:
                tree = self.env.parse(path.read_text(encoding="utf-8"))
            except jinja2.TemplateSyntaxError:
                continue  # reported by load_all
            for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
                if isinstance(node.node, nodes.Name) and node.node.name == "recipient":
                    if isinstance(node, nodes.Getattr):
                        used.add(node.attr)
                    elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                        used.add(node.arg.value)
        return used

    def render(self, locale: str, recipient: dict[str, Any]) -> Rendered:
        """Renders one locale for one recipient; any failure is a TemplateError naming file and line."""
        subject_t, text_t, html_t = self._load(locale)
        ctx = {
            "recipient": Namespace("recipient", recipient),
            "campaign": Namespace("campaign", self.campaign.variables),
            "locale": locale,
            "today": dt.date.today(),
            "text_direction": "rtl" if locale.split("-")[0] in RTL_LANGUAGES else "ltr",
        }
        try:
            subject = " ".join(subject_t.render(ctx).split())
            text = text_t.render(ctx)
            html = html_t.render(ctx)
        except TemplateError as e:
            raise TemplateError(f"{_where(e, self.roots)}: {e}") from None
        except jinja2.UndefinedError as e:
            raise TemplateError(f"{_where(e, self.roots)}: {e.message}",
                                hint="add it to [variables] in campaign.toml (campaign.*) or as a recipients column (recipient.*)") from None
        except SecurityError as e:
            raise TemplateError(f"{_where(e, self.roots)}: refused by the sandbox: {e}") from None
        except Exception as e:  # a template can raise anything its expressions do
            raise TemplateError(f"{_where(e, self.roots)}: {type(e).__name__}: {e}") from None
        if not subject:
            raise TemplateError(f"{self.roots[0] / locale / 'subject.txt'}: renders to an empty subject")
        return Rendered(locale, subject, text, html)


def recipient_context(email: str, name: str, locale: str, jurisdiction: str, vars: dict[str, Any]) -> dict[str, Any]:
    return {**vars, "email": email, "name": name, "locale": locale, "jurisdiction": jurisdiction}


def compose(campaign: Campaign, rendered: Rendered, *, to_email: str, to_name: str, key: str,
            date: dt.datetime | None = None) -> Message:
    """One recipient, one message: multipart/alternative text + HTML, UTF-8, deterministic Message-ID."""
    sender = campaign.sender_address
    local, _, domain = to_email.rpartition("@")
    smtputf8 = not (local.isascii() and sender.username.isascii())
    msg = EmailMessage(policy=SMTPUTF8 if smtputf8 else SMTP)
    mid = message_id(campaign.id, key, sender.domain)
    msg["From"] = sender
    msg["To"] = Address(display_name=to_name, username=local, domain=domain)
    if campaign.reply_to_address:
        msg["Reply-To"] = campaign.reply_to_address
    msg["Subject"] = rendered.subject
    msg["Date"] = format_datetime(date or dt.datetime.now(dt.timezone.utc))
    msg["Message-ID"] = mid
    msg["X-Notify-Id"] = mid
    msg["X-Notify-Campaign"] = campaign.id
    msg.set_content(rendered.text, charset="utf-8")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8")
    msg["Content-Language"] = rendered.locale  # after set_content, which clears Content-* headers
    data = msg.as_bytes()
    return Message(
        message_id=mid,
        sender=sender.addr_spec,
        recipient=to_email,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        smtputf8=smtputf8,
        tags={"campaign": campaign.id, "recipient": recipient_token(key)},
    )


def synthetic_recipient(locale: str, columns: Iterable[str]) -> dict[str, Any]:
    extra = {c: f"[{c}]" for c in columns if c not in ("email", "name", "locale", "jurisdiction")}
    return recipient_context("sample.recipient@example.com", "Sample Recipient", locale, "", extra)
