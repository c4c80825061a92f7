"""The fast MIME path gives a parser exactly what the email package gives it: every header, every
decoded body, for every shipped version, non-ASCII names and internationalized addresses."""

from __future__ import annotations

import email
import email.header
import email.policy
import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from notify.campaign import config as campaign
from notify.content import mime
from notify.content.compose import compose, compose_with_email_package, fast_path, recipient_context
from notify.content.render import Rendered, Templates

from .conftest import EXAMPLE

CAMPAIGN = campaign.load(EXAMPLE)
TEMPLATES = Templates(CAMPAIGN)
DATE = "Mon, 08 Aug 2022 12:00:00 +0000"

NAMES = ["", "Alice Smith", "José Ñúñez", "田中 太郎", "محمد علي", 'Smith, John "JJ" (Ops)', "Ω" * 60,
         "Renée O'Brien-Łukasiewicz de la Montaña y Hernández", "x" * 90]
ADDRESSES = ["alice@example.com", "josé@xn--bcher-kva.example", "o'brien+notice@mail.xn--fsq.jp", "用户@例子.广告"]


ADDRESS_HEADERS = ("from", "to", "reply-to")


def decoded(data: bytes) -> dict[str, object]:
    """What a reader's mail program sees: each header decoded (RFC 2047 by email.header, which drops
    whitespace between encoded-words as RFC 2047 6.2 says), and each body decoded."""
    raw = email.message_from_bytes(data, policy=email.policy.compat32)
    headers = []
    for name, value in raw.items():
        if name.lower() == "content-type":
            value = re.sub(r'boundary="[^"]+"', "boundary=*", " ".join(str(value).split()))  # boundaries differ by design
        text = str(email.header.make_header(email.header.decode_header(str(value)))) if "=?" in str(value) else str(value)
        text = " ".join(text.replace('"', "").split())
        if name.lower() in ADDRESS_HEADERS:
            # The email package moves a space at an encoded-word boundary out of the word, where
            # RFC 2047 6.2 drops it ("Name : x" reads "Name: x"); the fast path keeps it inside
            # the word. Names are compared without whitespace here, and test_generated_... checks
            # that the fast path keeps every character of the name.
            text = "".join(text.split())
        headers.append((name, text))
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    bodies = [(part.get_content_type(), part.get_content_charset(), part.get_content())  # type: ignore[attr-defined]
              for part in parsed.walk() if not part.is_multipart()]
    return {"headers": headers, "bodies": bodies}


FAST: list[bool] = []  # whether compose() took the fast path, for each message both() built (the last one last)


def both(rendered: Rendered, address: str, name: str) -> tuple[bytes, bytes]:
    fast = compose(CAMPAIGN, rendered, to_email=address, to_name=name, token="0" * 32)
    # The fast path knows whether the bytes need dot-stuffing from how it built them; the scan agrees.
    assert fast.transparent == mime.transparent(fast.data), (rendered, address, name)
    ref = compose_with_email_package(CAMPAIGN, rendered, to_email=address, to_name=name, mid=fast.message_id,
                                     date=DATE, smtputf8=fast.smtputf8)
    direct = None if fast.smtputf8 else fast_path(CAMPAIGN, rendered, to_email=address, to_name=name, mid=fast.message_id,
                                                   date=DATE)
    FAST.append(direct is not None)
    dated = re.sub(rb"Date: [^\r]+", f"Date: {DATE}".encode(), fast.data, count=1)
    assert dated == (direct[0] if direct is not None else ref), "compose() is the fast path where it applies, else the reference"
    return dated, ref


def test_every_shipped_version_name_and_address() -> None:
    fast_used = 0
    for version in TEMPLATES.versions:
        for address in ADDRESSES:
            for name in NAMES:
                rendered = TEMPLATES.render(version, recipient_context(address, name, version, "", {}))
                fast, ref = both(rendered, address, name)
                # The email package builds SMTPUTF8 messages and long quoted ASCII names; everything else is fast.
                expected_fast = address.split("@")[0].isascii() and not (name.isascii() and len(name) > 60)
                assert FAST[-1] == expected_fast, f"{version} {address} {name!r}"
                fast_used += expected_fast
                assert all(len(line) <= 998 for line in fast.split(b"\r\n"))
                if not FAST[-1]:
                    continue  # the email package built both: nothing to compare
                assert decoded(fast) == decoded(ref), (version, address, name)
    assert fast_used == len(TEMPLATES.versions) * 2 * 8


def test_long_lines_are_encoded_and_short_ones_are_not() -> None:
    long_ascii = Rendered("en", "S", "a" * 300 + "\n", "<p>" + "b " * 200 + "</p>\n")
    long_utf8 = Rendered("ja", "件名", "あ" * 300 + "\n", "<p>" + "い" * 300 + "</p>\n")
    short = Rendered("de", "Betreff", "Grüße\n", "<p>Grüße</p>\n")
    for rendered, ctes in ((long_ascii, [b"quoted-printable", b"quoted-printable"]), (long_utf8, [b"base64", b"base64"]),
                           (short, [b"8bit", b"8bit"])):
        fast, ref = both(rendered, "alice@example.com", "Alice")
        assert re.findall(rb"Content-Transfer-Encoding: (\S+)", fast) == ctes
        assert decoded(fast) == decoded(ref)
    fast, _ = both(Rendered("en", "x" * 1200, "t\n", "<p>h</p>\n"), "alice@example.com", "Alice")
    assert not FAST[-1], "a subject word longer than a line goes to the email package"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=50),
       st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=120),
       st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400))
@example(name="000" + "\u0800" * 14 + " : \xa0", subject="0", body="")  # a space where an encoded-word ends
@example(name="", subject="0", body=".top\n..two\n.")  # lines that start with a dot: 7bit, stuffed on the wire
@example(name="", subject="0", body="." + "a" * 90 + "\n.b")  # ... in quoted-printable
@example(name="", subject="0", body="a\rb\n")  # a bare CR in the text: the part's lines end in CRLF all the same
def test_generated_names_subjects_and_bodies(name: str, subject: str, body: str) -> None:
    subject = " ".join(subject.split()) or "x"  # render() collapses the subject to one line
    rendered = Rendered("en", subject, body, f"<p>{body}</p>")
    fast, ref = both(rendered, "alice@example.com", name)
    assert all(len(line) <= 998 for line in fast.split(b"\r\n"))
    assert decoded(fast) == decoded(ref)
    to = email.message_from_bytes(fast, policy=email.policy.compat32)["To"]
    if FAST[-1] and "=?" in to:  # the fast path encoded the name: every character survives
        assert str(email.header.make_header(email.header.decode_header(to))) == f"{name} <alice@example.com>"


def test_a_head_that_would_need_stuffing_is_not_called_transparent() -> None:
    """compose() never builds such a head (names and subjects with line breaks go to the email
    package), but assemble() checks its head rather than trusting its callers."""
    for to in (b"To: x\r\n.y <a@example.com>\r\n", b"To: x\ny <a@example.com>\r\n", b"To: a@example.com\r\n"):
        built = mime.assemble(constant=(b"From: s@example.com\r\n", b""), to=to, subject=b"Subject: s\r\n", date=DATE,
                              message_id="<m@example.com>", campaign_id="c", locale="en", text="t\n", html="<p>h</p>\n")
        assert built is not None
        data, clear = built
        assert clear == mime.transparent(data) == (to == b"To: a@example.com\r\n")
