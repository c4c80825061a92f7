"""#26: real bounces from many MTAs (Sisimai's public corpus, tests/data/sisimai), read against the
reference parser's own expected answers. bench/bounces.py prints the figures per MTA family; this
test holds the overall figures where they stand, so a change that reads real bounces worse fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from notify.bounces import parse_dsn

CORPUS = Path(__file__).parent / "data" / "sisimai"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())


def test_the_corpus_is_read_about_as_the_reference_reads_it() -> None:
    messages = attributed = recipients = agree = attributed_recipients = 0
    for name, expected in EXPECTED.items():
        items, _ = parse_dsn((CORPUS / name).read_bytes())
        ours = [f for f in items if f.address]
        messages += 1
        attributed += bool(ours)
        recipients += len(expected)
        agree += sum((f.kind == "bounced") == hard for f, (_, _, _, hard) in zip(ours, expected, strict=False))
        attributed_recipients += min(len(ours), len(expected))
    assert messages == 534 and recipients == 563
    # Measured: 96.1% attributed; hard/soft as Sisimai 513 of the 540 recipients attributed, 95.0% (the issue's
    # targets: 95% attributed, 95% of those classified as the reference does); 85.6% of all expected before
    # the dead-address line followed the command a refusal answered, directory verdicts, PowerMTA's category,
    # null MX and the status of a generic refusal.
    assert attributed / messages >= 0.96, attributed / messages
    assert agree / attributed_recipients >= 0.95, (agree, attributed_recipients)
    assert agree / recipients >= 0.91, agree / recipients


def test_no_dead_address_is_claimed_where_the_reference_sees_a_refused_message() -> None:
    """The costly mistake is suppressing a live address for every later campaign: count it alone."""
    wrongly_hard = []
    for name, expected in EXPECTED.items():
        items, _ = parse_dsn((CORPUS / name).read_bytes())
        for f, (_, _, reason, hard) in zip([f for f in items if f.address], expected, strict=False):
            if f.kind == "bounced" and not hard and reason not in ("delivered", "undefined", "onhold"):
                wrongly_hard.append((name, f.detail["reason"], reason))
    # Measured: 6 of 563 (#35: a name server that did not answer, a local delivery program that failed, were
    # read as dead addresses: 8); 33 before "user unknown" was read as a dead address only in reply to RCPT TO or
    # with a status that says so (reasons.settle), as the reference reads it.
    assert len(wrongly_hard) <= 6, wrongly_hard


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("rfc3834-*.eml")))
def test_automatic_replies_of_the_corpus_bounce_nobody(name: str) -> None:
    items, why = parse_dsn((CORPUS / name).read_bytes())
    assert items == [], why
