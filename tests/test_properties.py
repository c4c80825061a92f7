"""Properties over generated input: addresses and display names survive rendering and re-parsing."""

from __future__ import annotations

import email
import email.header
import email.policy
import re

from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from notify.campaign import config as campaign
from notify.content.compose import compose
from notify.content.render import Rendered
from notify.recipients.rows import Recipient, Record
from notify.recipients.validate import INVISIBLE, carried, validate

from .conftest import EXAMPLE

CAMPAIGN = campaign.load(EXAMPLE)
RENDERED = Rendered("en", "Notice of Data Breach", "text body\n", "<p>html body</p>\n")

local_chars = st.sampled_from(list("abcxyzABC019.-_+!#$%&'*/=?^`{|}~") + ["é", "ü", "ø", "名", "д"])
domains = st.sampled_from(["example.com", "EXAMPLE.org", "bücher.example", "例え.jp", "mail.xn--bcher-kva.example", "sub.example.net"])
addresses = st.builds(lambda local, dom: f"{''.join(local)}@{dom}", st.lists(local_chars, min_size=1, max_size=20), domains)
names = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_string(data.decode("utf-8"), policy=email.policy.default)  # type: ignore[return-value]


def display_name(raw_to: str, parsed: str) -> str:
    """The display name as an RFC 2047 decoder sees it.

    CPython's header parser keeps the folding whitespace between two adjacent encoded-words in a
    phrase, which RFC 2047 section 6.2 says to drop; email.header.decode_header drops it. Long
    non-ASCII names need several encoded-words, so they are checked with the latter."""
    phrase = raw_to.rsplit("<", 1)[0].strip() if "<" in raw_to else ""
    if "=?" not in phrase:
        return parsed
    return str(email.header.make_header(email.header.decode_header(phrase)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(addresses, names)
def test_address_and_name_survive_rendering(address: str, name: str) -> None:
    try:
        validate_email(address, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError:
        assume(False)
    item = validate(Record(2, f"{address},{name}", {"email": address, "name": name}))
    if not isinstance(item, Recipient):
        # Only names that could break a header, or that carry what a notice must not (#34: invisible or control
        # characters, a link, an address, markup), are refused, and always with a reason.
        assert re.search(r"[\x00-\x1f\x7f\u2028\u2029\x85]", name) or INVISIBLE.search(name) or carried(name), \
            (name, item.reason)
        return
    msg = compose(CAMPAIGN, RENDERED, to_email=item.email, to_name=item.name, token="0" * 32)
    head = msg.data.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in msg.data else msg.data.split(b"\n\n", 1)[0]
    for line in re.split(rb"\r?\n", head):
        assert b"\r" not in line and b"\0" not in line
    parsed = parse(msg.data)
    [to] = parsed["To"].addresses
    assert to.addr_spec == item.email
    raw_to = email.message_from_string(msg.data.decode("utf-8"), policy=email.policy.compat32)["To"]
    assert display_name(raw_to, to.display_name) == item.name
    assert parsed["Message-ID"] == msg.message_id


@settings(max_examples=1000, deadline=None)
@given(st.one_of(addresses, st.text(max_size=80), st.builds(lambda a, b: f"{a}@{b}", st.text(max_size=70), st.text(max_size=70))))
def test_cached_domain_check_says_what_email_validator_says(address: str) -> None:
    """recipients.check_address validates each domain once; its verdict must be email-validator's own."""
    from notify.recipients.validate import check_address

    try:
        v = validate_email(address, check_deliverability=False, allow_smtputf8=True)
        expected: tuple[str | None, str | None] = (f"{v.local_part}@{v.ascii_domain}", None)
    except EmailNotValidError as e:
        expected = (None, str(e))
    assert check_address(address) == expected
