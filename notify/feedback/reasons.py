"""What a bounce means: a reason from a documented taxonomy, and whether the address itself is dead.

The taxonomy is the reference parser's (Sisimai: https://libsisimai.org/en/reason/), so our figures
can be compared with it. Only four reasons say the *address* is dead and suppress it for every
later campaign (HARD). Every other permanent refusal was of the *message* (a filter, a policy, a
full mailbox, an expired retry): the person was not notified by email, but the address is live and
stays mailable. Transient ones are recorded.

classify() reads the diagnostic text first (a server's words are more specific than the code it
chose: many answer 550 5.1.1 to everything) and falls back on the RFC 3463 status code.
"""

from __future__ import annotations

import re

# The address is dead: suppressed.
HARD = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept"})

# Phrases (lower case) that say which reason, checked in this order: the more specific first.
# Assembled from the wording of real MTAs (the reference parser's corpus), not copied lists.
PHRASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # A name server that did not answer ("try again") is not a domain that does not exist; a local delivery
    # program that failed (procmail could not write the mailbox) is not a user that does not exist.
    # Postfix says "Name service error ...: Host not found, try again" when the name server failed, and the same
    # without "try again" when it answered that the name does not exist.
    ("networkerror", ("host not found, try again", "temporary failure in name resolution")),
    ("mailererror", ("procmail:", "maildrop:", "mail delivery agent", "local delivery program")),
    ("hostunknown", ("domain is not reachable", "account or domain may not exist")),
    ("rejected", ("you may not have permission to post", "group you tried to contact", "sender address rejected",
                  "sender rejected", "domain of sender address", "bogus mail from", "sender verify failed",
                  "sender verification", "envelope sender", "after mail from", "in reply to mail from")),
    ("hasmoved", (" has been replaced by ", "mailbox has moved", "mailbox owner has changed")),
    ("notaccept", ("couldn't find a mail exchanger", "does not accept mail", "null mx", "nullmx", "mail receiving disabled",
                   "host does not accept", "no mx record found", "indicated no smtp service",
                   "not accepting network messages")),  # RFC 7505 null MX; RFC 3463 X.3.2
    ("norelaying", ("relay access denied", "relaying denied", "relay not permitted", "we do not relay", "no relaying",
                    "not permitted to relay", "unable to relay", "relay denied", "not allowed to relay", "as a relay")),
    ("mailboxfull", ("mailbox size limit",)),  # before mesgtoobig's "size limit": the mailbox's size, not the message's
    ("mesgtoobig", ("message too big", "message is too big", "message size exceeds", "size limit", "message too large",
                    "exceeded maximum inbound message size", "message file too big", "message length exceeds",
                    "max message size exceeded", "exceeds the maximum size", "too big for system")),
    ("mailboxfull", ("mailbox full", "mailbox is full", "over quota", "overquota", "quota exceeded", "exceeded storage",
                     "full mailbox", "insufficient disk space", "not enough disk space", "mailbox size limit", "disk quota", "quota exceed",
                     "not enough space", "exceeding its mailbox quota", "inbox is full", "mailfolder is full",
                     "user is over their quota", "exceeds storage")),
    ("blocked", ("blocked using", "blacklisted", "blocklisted", "listed at", " is listed in", " are listed in", "spamhaus", "spamcop",
                 "dnsbl", " rbl", "client host rejected", "your ip", "ip address", "bad sender ip", "banned sending ip",
                 "access denied. ip name lookup failed", "connection refused", "connection dropped",
                 "not allowed to send", "poor reputation", "bad reputation", "sender reputation")),
    ("virusdetected", ("virus", "malware", "potentially executable attachment")),
    ("spamdetected", ("spam", "unsolicited", "bulk mail", "bulk e-mail", "junk mail", "content filter",
                      "message content rejected", "blocked by policy: no spam")),
    ("authfailure", ("spf", "dmarc", "dkim", "sender policy framework", "authentication checks failed")),
    ("requireptr", ("reverse dns", "ptr record", "no ptr", "reverse lookup", "rdns", "cannot find your hostname",
                    "cannot resolve your address", "not have a reverse")),
    ("suspend", ("suspended", "disabled", "deactivated", "inactive", "is frozen", "account has been locked",
                 "temporarily locked", "account is locked", "expired account", "account expired")),
    ("hostunknown", ("host unknown", "unknown host", "host not found", "domain not found", "no such domain",
                     "domain does not exist", "unknown domain", "name or service not known", "nxdomain",
                     "unrouteable mail domain", "host or domain name not found", "domain must exist",
                     "unroutable domain", "couldn't find any host", "no route to host", "dns error",
                     "unrouteable address", "unroutable address")),  # Exim: no route to the address's domain
    ("userunknown", ("user unknown", "unknown user", "no such user", "user not found", "no such mailbox",
                     "mailbox not found", "mailbox unavailable", "mailbox does not exist", "address does not exist",
                     "does not exist", "invalid recipient", "recipient unknown", "unknown recipient",
                     "recipient not found", "no such recipient", "no mailbox", "not a valid mailbox",
                     "invalid mailbox", "unknown address", "address unknown",
                     "bad destination mailbox", "no such person", "not listed in", "undeliverable address",
                     "is not a known user", "account does not exist", "unknown local part", "no such local user",
                     "user doesn't exist", "user does not exist",
                     "doesn't have a", "not our customer", "mailbox is unavailable", "invalid address",
                     "no account by that name", "not a valid user", "user invalid",
                     "addressee unknown", "the email account that you tried to reach does not exist",
                     "no longer available", "is not a valid", "user not exist", "invalid final delivery userid",
                     "recipient not found", "does not like recipient", "ディレクトリのリストにありません", "ディレクトリには見つかりません",
                     "mail-box not found", "not an active address", "no mail box available", "bad_recipient")),
    ("expired", ("delivery expired", "delivery time expired", "message expired", "giving up on", "retry time",
                 "retry timeout exceeded", "could not be delivered for", "has been delayed", "timed out",
                 "time out", "have been failing for a long time", "was not delivered within", "too long in the queue",
                 "queue too long", "delivery attempts will continue", "not been delivered for")),
    ("policyviolation", ("policy", "prohibited", "not accepted for policy reasons", "illegal attachment",
                         "members-only", "closed mailing list", "organizational settings", "header error")),
    ("filtered", ("filtered", "user rules", "recipient preferences", "refuse to receive", "user reject",
                  "only accepting mail from", "is not accepting", "not authorized", "access denied",
                  "not allowed", "restricted")),
    ("securityerror", ("authentication required", "authentication failure", "starttls", "tls required",
                       "encryption", "insecure")),
    ("toomanyconn", ("too many connections", "too many recipients", "connection rate limit", "too many concurrent",
                     "too many smtp sessions")),
    ("speeding", ("rate limit", "rate-limit", "too fast", "slow down", "try again slower", "throttl")),
    ("systemfull", ("mail system full", "system full", "insufficient system storage")),
    ("networkerror", ("network", "remote protocol error", "connection reset by peer", "routing loop", "mail loop",
                      "too many hops", "hop count", "lookup failure",
                      "name server", "unreachable")),
    ("contenterror", ("mime", "8-bit data", "header size", "duplicate header", "improperly-formatted")),
    ("syntaxerror", ("syntax error", "command unrecognized", "bad sequence of commands", "line too long")),
    ("systemerror", ("system error", "internal error", "local error", "configuration error", "server error",
                     "temporary failure", "try again later", "temporarily unavailable", "service unavailable")),
)
# Said before the real reason ("Recipient address rejected: <why>"): the status code decides when it has a
# reason of its own (5.6.0 media error: contenterror), and "user unknown" only when nothing else is said.
GENERIC_REFUSAL = ("recipient address rejected", "address rejected", "recipient rejected")

# The system that holds the mailboxes looked the name up in its directory and did not find it (Exchange,
# Domino and Notes, IMail): a dead address, whatever command the report leaves unsaid.
DIRECTORY_VERDICT = ("recipient name is not recognized", "not listed in domino directory", "not listed in public name",
                     "ディレクトリのリストにありません", "ディレクトリには見つかりません", "invalid final delivery userid")

# PowerMTA says what it made of a bounce in its own DSN field (X-PowerMTA-BounceCategory): its verdict decides.
POWERMTA_CATEGORY = {"bad-mailbox": "userunknown", "bad-domain": "hostunknown", "inactive-mailbox": "suspend",
                     "quota-issues": "mailboxfull", "message-expired": "expired", "spam-related": "spamdetected",
                     "virus-related": "virusdetected", "policy-related": "policyviolation", "no-answer-from-host":
                     "networkerror", "bad-connection": "networkerror", "routing-errors": "systemerror",
                     "content-related": "contenterror", "relaying-issues": "norelaying", "protocol-errors": "systemerror"}

# RFC 3463 status -> reason, where the code is precise enough to say (the reference parser's table).
STATUS = {
    "1.0": "userunknown", "1.1": "userunknown", "1.2": "hostunknown", "1.3": "userunknown", "1.4": "filtered",
    "1.6": "hasmoved", "1.7": "rejected", "1.8": "rejected", "1.9": "systemerror", "1.10": "notaccept",
    "2.0": "filtered", "2.1": "suspend", "2.2": "mailboxfull", "2.3": "exceedlimit", "2.4": "filtered",
    "3.0": "systemerror", "3.1": "systemfull", "3.2": "notaccept", "3.3": "systemerror", "3.4": "mesgtoobig",
    "3.5": "systemerror", "4.0": "networkerror", "4.1": "expired", "4.2": "networkerror", "4.3": "systemerror",
    "4.4": "hostunknown", "4.5": "systemfull", "4.6": "networkerror", "4.7": "expired", "5.0": "syntaxerror",
    "5.2": "syntaxerror", "5.3": "toomanyconn", "5.4": "systemerror", "5.5": "systemerror",
    "6.0": "contenterror", "6.1": "contenterror", "6.2": "contenterror", "6.3": "contenterror",
    "6.5": "contenterror", "6.6": "contenterror", "7.0": "securityerror", "7.1": "securityerror",
    "7.13": "suspend", "7.17": "hasmoved", "7.18": "hasmoved", "7.20": "authfailure", "7.21": "authfailure",
    "7.22": "authfailure", "7.23": "authfailure", "7.24": "authfailure", "7.25": "requireptr",
    "7.26": "authfailure", "7.27": "notaccept", "7.28": "spamdetected", "7.29": "authfailure",
}
_SPACE = re.compile(r"\s+")


# A refusal after DATA: the server had accepted the recipient at RCPT TO, so "user unknown" then is
# a filter's word, not a dead address (the reference parser reads it so too).
AFTER_DATA = ("end of data", "after data", "final data", "data command", "after end of data")


# "neko.example.com does not exist": what does not exist is a domain (a name with no local part), not a mailbox.
_NO_SUCH_DOMAIN = re.compile(r"(?<![@\w.-])(?:[a-z0-9-]{1,63}\.){1,8}[a-z]{2,63} does not exist")
# A refusal that names no recipient ("550 : User unknown", "550: : User unknown"): a receiving system's filter
# answering for the message in the words of a dead address (KDDI's, relayed as is by Exchange and Yahoo).
_NOBODY_UNKNOWN = re.compile(r"(?<!\d)5\d\d ?: (?:: )?user unknown")


def classify(status: str | None, diagnostic: str | None) -> str:
    """The reason of one failed recipient: from the diagnostic's words, else from the status code."""
    text = _SPACE.sub(" ", (diagnostic or "").lower())
    if text:
        for reason, phrases in PHRASES:
            if any(p in text for p in phrases):
                if reason == "userunknown" and _NO_SUCH_DOMAIN.search(text[:4096]):
                    return "hostunknown"
                if reason == "userunknown" and any(p in text for p in AFTER_DATA):
                    return "filtered"
                return reason
    code = (status or "").strip()
    found = STATUS.get(code.split(".", 1)[1]) if code.count(".") == 2 else None
    if text and any(p in text for p in GENERIC_REFUSAL) and (found is None or found in HARD):
        return found or "userunknown"  # "Recipient address rejected" with 5.1.2: the host, not the user
    return found or "undefined"


def dead_or_refused(reason: str, status: str, command: str | None, diagnostic: str) -> str:
    """Dead address or refused message, where the reference parser draws the line. A status that says the
    mailbox does not exist (*.1.0, *.1.1, *.1.3) decides. Otherwise words like "user unknown" mean a dead address only in reply
    to RCPT TO, when the server refused the recipient itself; said after DATA, or where the report does
    not say which command they answered, they are a filter's refusal of the message (filtered: the
    person was not notified by email, and the address stays mailable). A refusal at RCPT TO in
    generic words ("Recipient address rejected: Access denied") is of the recipient."""
    sub = status.strip().split(".", 1)[1] if status.strip().count(".") == 2 else ""
    text = _SPACE.sub(" ", diagnostic.lower()).strip()
    if text.startswith("551") and ".7." not in status and classify(None, text) in ("undefined", *HARD):
        return "hasmoved"  # RFC 5321: 551 User not local; its words decide where they say otherwise ("classified as spam")
    if reason == "suspend" and sub == "1.1":  # "inactive address" with 5.1.1: the mailbox is gone
        return "userunknown"
    if reason == "userunknown":
        return _unknown_user(sub, command, text)
    if reason == "filtered" and command == "RCPT" and any(p in text for p in GENERIC_REFUSAL):
        return "userunknown"
    return reason


def _unknown_user(sub: str, command: str | None, text: str) -> str:
    """Words of a dead address: dead where the status, the command (RCPT TO) or a directory's verdict says so; a
    policy's refusal of the message (filtered) where X.7.X says so or nothing does."""
    if _NOBODY_UNKNOWN.search(text) or sub.startswith("7."):
        return "filtered"  # X.7.X: refused by policy (RFC 3463), in the words of a dead address
    # (5.1.351, Exchange's "unknown recipient", counts as its 5.1.3)
    said_by_status = STATUS.get(sub) == "userunknown" or (len(sub) > 3 and STATUS.get(sub[:3]) == "userunknown")
    directory = any(p in text for p in DIRECTORY_VERDICT)
    return "userunknown" if said_by_status or command == "RCPT" or directory else "filtered"


# Said in a report's own prose, these doubt a status that calls the address dead: the account exists.
CONTRADICTING = frozenset({"suspend", "mailboxfull"})
CONTRADICTING_PHRASES = tuple(p for reason, phrases in PHRASES if reason in CONTRADICTING for p in phrases)


def is_hard(reason: str) -> bool:
    return reason in HARD
