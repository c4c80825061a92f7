"""Versions and locales: variant/locale names, their order and fallbacks, and dates as each locale writes them."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

import babel
import babel.dates
import jinja2

from ..errors import TemplateError

PARTS = ("subject.txt", "body.txt", "body.html")

VARIANTS = "variants"  # templates/<template>/variants/<jurisdiction>/<locale>/ : a jurisdiction's own text

FALLBACK_LOCALE = "en"

RTL_LANGUAGES = {"ar", "he", "fa", "ur", "yi", "ps", "sd", "ug", "dv", "ku"}


def split_version(version: str) -> tuple[str, str]:
    """ "US-MA/en" -> ("US-MA", "en"); "en" -> ("", "en")."""
    variant, _, locale = version.rpartition("/")
    return variant, locale


def version_order(version: str) -> tuple[bool, str]:
    """The default variant's locales first, then each variant's: en, fr, US-MA/en."""
    return "/" in version, version


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
    if not isinstance(value, (dt.date, dt.datetime)):
        raise TemplateError(f"the date filter got {value!r}, which is not a date")
    if not isinstance(format, str):
        raise TemplateError(f"the date filter's format is {format!r}: give short, medium, long, full or a date pattern, "
                            "as text (date(\"d MMMM y\"))")
    try:
        said = _format_date(value, format, ctx["locale"])
    except (ValueError, KeyError) as e:  # babel's words for a pattern it cannot read
        raise TemplateError(f"the date filter's format {format!r} is not a date pattern: {e}") from None
    if not said.strip():  # an unterminated quote: babel prints nothing, and the notice would say "on ."
        raise TemplateError(f"the date filter's format {format!r} prints nothing (a quote left open?)")
    return said


@functools.lru_cache(maxsize=4096)
def _format_date(value: dt.date, format: str, locale: str) -> str:
    """babel formats a date in ~100 us; a campaign prints the same few dates in a few locales."""
    if isinstance(value, dt.datetime):
        return babel.dates.format_datetime(value, format=format, locale=babel_locale(locale))
    return babel.dates.format_date(value, format=format, locale=babel_locale(locale))
