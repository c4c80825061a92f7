"""`notify check --dns`: do the sender domain's SPF, DKIM and DMARC records let the notice arrive?

Gmail and Yahoo require SPF and DKIM and a DMARC record (p=none is enough) from anyone sending
5,000 messages a day to their users (REFERENCE.md A6); a breach notice to a large list is exactly
that. This reads the records through dnspython and says what is missing, in words.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.resolver

from ..campaign.model import Campaign, SesConfig, SmtpConfig


@dataclass(frozen=True)
class DnsFinding:
    level: str  # "ok" | "warning" | "error"
    record: str  # SPF | DKIM | DMARC
    message: str


def resolver_for(server: str | None) -> dns.resolver.Resolver:
    """The system's resolver, or one that asks only `server` (an address, with an optional :port)."""
    if not server:
        return dns.resolver.Resolver()
    r = dns.resolver.Resolver(configure=False)
    host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
    r.nameservers = [host]
    r.port = int(port) if port else 53
    r.lifetime = 3.0
    return r


class _Lookup:
    def __init__(self, resolver: dns.resolver.Resolver) -> None:
        self.resolver = resolver

    def txt(self, name: str) -> list[str] | str:
        """The TXT strings at `name` (each record's parts joined), [] when there are none, or why the
        lookup failed (a string)."""
        try:
            answer = self.resolver.resolve(name, "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.resolver.NoNameservers:
            return f"no name server answered for {name}"
        except dns.exception.Timeout:
            return f"the lookup of {name} timed out"
        except dns.exception.DNSException as e:
            return f"the lookup of {name} failed: {e}"
        return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]


def _org(domain: str) -> str:
    """The organizational domain, approximately (the last two labels); DMARC falls back to it."""
    return ".".join(domain.split(".")[-2:])


def check_dns(campaign: Campaign, resolver: dns.resolver.Resolver) -> list[DnsFinding]:
    """The sender domain's SPF, the DKIM key of each selector we sign with, and DMARC, as receivers read them."""
    look = _Lookup(resolver)
    domain = campaign.sender_address.domain.lower()
    return [_spf(look, domain), *_dkim(campaign, look, domain), _dmarc(look, domain)]


def _spf(look: _Lookup, domain: str) -> DnsFinding:
    """SPF (RFC 7208): exactly one v=spf1 record at the sender's domain."""
    txt = look.txt(domain)
    if isinstance(txt, str):
        return DnsFinding("error", "SPF", txt)
    spf = [t for t in txt if t.lower().startswith("v=spf1")]
    if not spf:
        return DnsFinding("error", "SPF", f"{domain} has no SPF record (a TXT record starting v=spf1): "
                                          "Gmail and Yahoo reject or junk bulk mail without one")
    if len(spf) > 1:
        return DnsFinding("error", "SPF", f"{domain} has {len(spf)} SPF records; RFC 7208 makes that a "
                                          "permanent error, as if there were none: merge them into one")
    if spf[0].split()[-1].lower() in ("+all", "all"):
        return DnsFinding("warning", "SPF", f"{domain}: {spf[0]!r} lets anyone send as {domain}, "
                                            "which helps the phishers this notice warns about")
    return DnsFinding("ok", "SPF", f"{domain}: {spf[0]}")


def _dkim(campaign: Campaign, look: _Lookup, domain: str) -> list[DnsFinding]:
    """DKIM: the public key for each selector we sign with, and its alignment with the From domain."""
    selectors = [(p.dkim_selector, (p.dkim_domain or domain).lower()) for p in campaign.providers.values()
                 if isinstance(p, SmtpConfig) and p.dkim_selector]
    out = []
    for selector, ddomain in selectors:
        name = f"{selector}._domainkey.{ddomain}"
        txt = look.txt(name)
        if isinstance(txt, str):  # the lookup itself failed: nothing more to say of this selector
            out.append(DnsFinding("error", "DKIM", txt))
            continue
        out.append(_dkim_key(name, txt))
        if _org(ddomain) != _org(domain):
            out.append(DnsFinding("warning", "DKIM", f"the signing domain {ddomain} is not aligned with the From "
                                                     f"domain {domain}: DMARC will not count the signature"))
    if not selectors:
        ses = any(isinstance(p, SesConfig) for p in campaign.providers.values())
        out.append(DnsFinding("warning", "DKIM", "no DKIM selector is configured, so its record cannot be checked"
                              + ("; for SES, check Easy DKIM's status in the SES console" if ses else
                                 "; set dkim_selector (and dkim_key_file) on the SMTP provider, or check your provider's DKIM")))
    return out


def _dkim_key(name: str, txt: list[str]) -> DnsFinding:
    keys = [t for t in txt if "p=" in t.replace(" ", "")]
    tags = dict(part.strip().split("=", 1) for k in keys[:1] for part in k.split(";") if "=" in part)
    if not keys:
        return DnsFinding("error", "DKIM", f"{name} has no DKIM key: receivers cannot verify our signatures")
    if not tags.get("p", "").strip():
        return DnsFinding("error", "DKIM", f"{name} has an empty p=: the key was revoked")
    return DnsFinding("ok", "DKIM", f"{name}: key published ({tags.get('k', 'rsa').strip()})")


def _dmarc(look: _Lookup, domain: str) -> DnsFinding:
    """DMARC (RFC 7489): _dmarc at the From domain, else at the organizational domain."""
    for where in dict.fromkeys((domain, _org(domain))):
        txt = look.txt(f"_dmarc.{where}")
        if isinstance(txt, str):
            return DnsFinding("error", "DMARC", txt)
        dmarc = [t for t in txt if t.lower().replace(" ", "").startswith("v=dmarc1")]
        if dmarc:
            policy = dict(p.strip().split("=", 1) for p in dmarc[0].split(";") if "=" in p).get("p", "").strip()
            level = "ok" if policy in ("none", "quarantine", "reject") else "error"
            note = "" if level == "ok" else " (no valid p= policy)"
            return DnsFinding(level, "DMARC", f"_dmarc.{where}: {dmarc[0]}{note}")
    return DnsFinding("error", "DMARC", f"no DMARC record at _dmarc.{domain}"
                      + (f" or _dmarc.{_org(domain)}" if _org(domain) != domain else "")
                      + ": Gmail and Yahoo require one from bulk senders (p=none is enough)")
