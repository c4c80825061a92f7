"""A bounce message read into Feedback: an SES notification that came by email, or a delivery report
(dsn.py decides whether it is a bounce at all and reads every failed recipient; reasons.py, what each
means). Anyone can write a bounce message, so its address ties it to nobody: only our VERP token or
Message-ID does (recorder.py).
"""
from __future__ import annotations

import hashlib

from . import dsn, reasons
from .model import Feedback, Malformed, campaign_of
from .report import MAX_BLOCKS
from .ses import parse_ses


def parse_dsn(raw: bytes) -> tuple[list[Feedback], str]:
    """A bounce message's feedback, one per failed recipient, and, when there is none, why it is not a bounce.
    An SES notification delivered by email (an SNS email subscription) is read as SES's own JSON."""
    key = "dsn:" + hashlib.sha256(raw).hexdigest()
    if (body := dsn.ses_notification(raw)) is not None:
        try:
            items = parse_ses(body, key)
        except Malformed as e:
            return [], f"an SES notification by email that cannot be read: {e}"
        for fb in items:
            fb.source, fb.address_trusted = "ses-email", False
        return items, ""
    report = dsn.parse(raw)
    campaign = report.campaign or campaign_of(report.message_id)
    out: list[Feedback] = []
    for i, f in enumerate(report.recipients):
        if f.action == "complained":  # a feedback loop's report (dsn._read_arf)
            kind = "complained"
        elif f.action in ("delivered", "relayed", "expanded"):
            kind = "delivered"
        elif f.action == "failed" and (report.form == "dsn" or not f.status.startswith("4")):
            # A DSN's Action: failed means the remote side gave up, whatever the status class: 4.4.7 expired, 4.0.0
            # with "mailbox size limit" were not delivered (RFC 3464 2.3.3). A 4.x.x never says the address is dead.
            kind = "bounced" if reasons.is_hard(f.reason) and not f.status.startswith("4") else "bounce_refused"
        else:
            kind = "bounce_transient"
        # Anyone can write a bounce message: the address in it finds nobody by itself (address_trusted).
        out.append(Feedback(kind, f"{key}:{i}", "dsn", address=f.address, token=report.token, message_id=report.message_id,
                            campaign=campaign, original=f.original, address_trusted=False,
                            detail={"action": f.action, "status": f.status, "reason": f.reason,
                                    "diagnostic": (f.diagnostic or "")[:1000] or None, "form": report.form,
                                    **({"feedback_type": f.diagnostic} if kind == "complained" else {})}))
    why = "" if out else f"not a bounce: {report.why}" if report.why else f"{report.form}: no failed recipient found"
    if report.blocks_skipped:
        why = f"{report.blocks_skipped} recipient block(s) past the first {MAX_BLOCKS} not read"
    return out, why
