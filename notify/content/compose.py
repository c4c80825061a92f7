"""A recipient's message composed from a rendered version: headers, parts, the exact bytes (a Message)."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime
from typing import Any

from ..campaign.model import Campaign, tzinfo
from ..errors import TemplateError
from . import mime
from .message import Message, message_id
from .render import Rendered, Templates


@dataclass(frozen=True)
class Built:
    """One recipient's notice: the version used, its rendered parts and the exact message."""

    version: str
    rendered: Rendered
    message: Message


@dataclass(frozen=True)
class RenderFailure:
    """Why one recipient's notice could not be built (their own data broke it): recorded, never sent."""

    version: str
    reason: str
    hint: str | None = None


def build_message(templates: Templates, recipient: dict[str, Any], *, to_email: str, token: str,
                  version: str | None = None, at: dt.datetime | None = None) -> Built | RenderFailure:
    """The one way a recipient becomes a message: resolve the version (unless given), render, compose.
    `recipient` is recipient_context()'s dict (whose email is the address as people read it);
    `to_email` the address as stored, which the envelope and the To header take (IDNA domain);
    `token` the recipient's stored token, which the Message-ID, VERP address and tags carry; `at` the
    moment to build it as of (its date in the text and the Date header; now when not given), which
    `notify lookup` uses to rebuild a message sent earlier byte for byte."""
    campaign = templates.campaign
    try:
        if version is None:
            version = templates.resolve(recipient["locale"] or campaign.default_locale, recipient["jurisdiction"])
        rendered = templates.render(version, recipient, at.date() if at else None)
        message = compose(campaign, rendered, to_email=to_email, to_name=recipient["name"], token=token, date=at)
    except TemplateError as e:
        return RenderFailure(version or recipient["locale"] or campaign.default_locale, str(e), e.hint)
    except ValueError as e:  # the email package refuses a header value
        where = version or recipient["locale"] or campaign.default_locale
        return RenderFailure(where, f"{templates.roots[0] / where}: the message cannot be built: {e}")
    return Built(version, rendered, message)


def display_address(email: str) -> str:
    """The address as a person reads it: josé@bücher.example, not josé@xn--bcher-kva.example. The
    envelope and the To header keep the IDNA form; only what templates print is decoded."""
    local, _, domain = email.rpartition("@")
    if "xn--" not in domain.lower():
        return email
    return f"{local}@{_unicode_domain(domain)}"


@functools.lru_cache(maxsize=4096)  # Python's IDNA codec takes about 0.1 ms a domain; an export asks for each many times
def _unicode_domain(domain: str) -> str:
    try:
        return domain.encode("ascii").decode("idna")
    except UnicodeError:
        return domain  # not valid IDNA after all: show it as it is rather than guess


def recipient_context(email: str, name: str, locale: str, jurisdiction: str, vars: dict[str, Any]) -> dict[str, Any]:
    return {**vars, "email": display_address(email), "name": name, "locale": locale, "jurisdiction": jurisdiction}


def compose(campaign: Campaign, rendered: Rendered, *, to_email: str, to_name: str, token: str,
            date: dt.datetime | None = None) -> Message:
    """One recipient, one message: multipart/alternative text + HTML, UTF-8, deterministic Message-ID.

    The fast path (mime.py) builds the bytes directly; whatever it does not handle exactly (an
    SMTPUTF8 message, a header it would have to quote and fold) goes through the email package.
    Both give the same message to a parser: tests/test_mime.py compares them."""
    sender = campaign.sender_address
    sender_addr = sender.addr_spec
    local = to_email.rpartition("@")[0]
    smtputf8 = not (local.isascii() and sender.username.isascii())
    mid = message_id(campaign.id, token, sender.domain)
    when = date_header(int(time.time()), campaign.timezone) if date is None else format_datetime(date)
    built = None if smtputf8 else fast_path(campaign, rendered, to_email=to_email, to_name=to_name, mid=mid, date=when)
    data, clear = built if built is not None else (None, False)
    if data is None:
        data = compose_with_email_package(campaign, rendered, to_email=to_email, to_name=to_name, mid=mid, date=when,
                                          smtputf8=smtputf8)
        clear = mime.transparent(data)
    return Message(
        message_id=mid,
        sender=sender_addr,
        recipient=to_email,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        smtputf8=smtputf8,
        tags={"campaign": campaign.id, "recipient": token},
        transparent=clear,
    )


def fast_path(campaign: Campaign, rendered: Rendered, *, to_email: str, to_name: str, mid: str,
              date: str) -> tuple[bytes, bool] | None:
    """The message's bytes and whether they are transparent, built directly (mime.py); None where the fast path
    does not build it exactly (a header it would have to quote and fold): then the email package does."""
    sender = campaign.sender_address
    reply = campaign.reply_to_address
    constant = mime.constant_headers((sender.display_name, sender.addr_spec),
                                     (reply.display_name, reply.addr_spec) if reply else None)
    to = mime.address_header("To", to_name, to_email)
    subject = mime.subject_header(rendered.subject)
    if constant is None or to is None or subject is None:
        return None
    return mime.assemble(constant=constant, to=to, subject=subject, date=date, message_id=mid, campaign_id=campaign.id,
                         locale=rendered.locale, text=rendered.text, html=rendered.html)


@functools.lru_cache(maxsize=2)
def date_header(second: int, zone: str = "UTC") -> str:
    """The Date header for a second, in the campaign's time zone: the same for every message composed in it."""
    return format_datetime(dt.datetime.fromtimestamp(second, tzinfo(zone)))


def compose_with_email_package(campaign: Campaign, rendered: Rendered, *, to_email: str, to_name: str, mid: str,
                               date: str, smtputf8: bool) -> bytes:
    """The reference: the email package builds the message (about 1 ms; the fast path is the norm)."""
    sender = campaign.sender_address
    local, _, domain = to_email.rpartition("@")
    msg = EmailMessage(policy=SMTPUTF8 if smtputf8 else SMTP)
    msg["From"] = sender
    msg["To"] = Address(display_name=to_name, username=local, domain=domain)
    if campaign.reply_to_address:
        msg["Reply-To"] = campaign.reply_to_address
    msg["Subject"] = rendered.subject
    msg["Date"] = date
    msg["Message-ID"] = mid
    msg["X-Notify-Id"] = mid
    msg["X-Notify-Campaign"] = campaign.id
    msg.set_content(rendered.text, charset="utf-8")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8")
    msg["Content-Language"] = rendered.locale  # after set_content, which clears Content-* headers
    # The email package draws a random boundary; the same one as the fast path's makes the bytes a function of the
    # message alone, so that it can be composed again byte for byte (#37: every SMTPUTF8 message failed to rebuild).
    msg.set_boundary(mime.boundary_for(mid, rendered.text.encode("utf-8", "surrogateescape"),
                                       rendered.html.encode("utf-8", "surrogateescape")))
    return msg.as_bytes()


def synthetic_recipient(locale: str, columns: Iterable[str]) -> dict[str, Any]:
    extra = {c: f"[{c}]" for c in columns if c not in ("email", "name", "locale", "jurisdiction")}
    return recipient_context("sample.recipient@example.com", "Sample Recipient", locale, "", extra)
