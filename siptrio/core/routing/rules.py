"""Routes to trunks and gateways: the ``[routes]`` rules, parsed and matched, sans-IO.

A rule names which requests it takes and the next hops to send them to, tried in
order (the job of Kamailio's dispatcher or OpenSIPS's drouting)::

    us       = prefix +1 -> sip:gw1.example.net;transport=tcp, sip:gw2.example.net
    intl     = user ^00[1-9] -> sip:trunk.example.net
    partner  = domain partner.example.org -> sip:sbc.example.org:5070
    outside  = nonlocal -> sip:trunk.example.net
    fallback = unregistered -> sip:voicemail.example.net

Rules are tried in the order written; the first that matches decides. Registered
users of our domains are reached through their bindings before any rule is looked
at, and an unregistered user of our domains goes to a route only when a rule names
it (by its number, or ``unregistered``): ``domain`` and ``nonlocal`` rules match only
requests for other domains.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from types import MappingProxyType

from ...sip.errors import SipParseError
from ...sip.uri import SipUri, parse_uri_untrusted

__all__ = ["MatchKind", "RouteRule", "parse_hop", "parse_rule"]


class MatchKind(enum.Enum):
    PREFIX = "prefix"  # the Request-URI's user part starts with the text
    USER = "user"  # ... matches the regular expression (re.search)
    DOMAIN = "domain"  # the Request-URI's host is this domain (*.d for its subdomains)
    NONLOCAL = "nonlocal"  # the Request-URI's host is not one of ours
    UNREGISTERED = "unregistered"  # a user of ours with no binding


_NEEDS_PATTERN = frozenset({MatchKind.PREFIX, MatchKind.USER, MatchKind.DOMAIN})


@dataclass(frozen=True, kw_only=True)
class RouteRule:
    name: str
    kind: MatchKind
    pattern: str = ""
    hops: tuple[SipUri, ...]
    regex: re.Pattern[str] | None = None

    def matches(self, uri: SipUri, *, local: bool) -> bool:
        """Does this rule take a request for ``uri``? (``local``: one of our domains)"""
        kind = self.kind
        if kind is MatchKind.PREFIX:
            return uri.user is not None and uri.user.startswith(self.pattern)
        if kind is MatchKind.USER:
            assert self.regex is not None
            return uri.user is not None and self.regex.search(uri.user) is not None
        if kind is MatchKind.UNREGISTERED:
            return local
        if local:
            return False
        if kind is MatchKind.NONLOCAL:
            return True
        host = uri.host_ip.lower().rstrip(".")
        pattern = self.pattern
        if pattern.startswith("*."):
            return host.endswith(pattern[1:])
        return host == pattern

    def describe(self) -> str:
        hops = ", ".join(str(h) for h in self.hops)
        what = f"{self.kind.value} {self.pattern}".strip()
        return f"{what} -> {hops}"


def parse_hop(text: str) -> SipUri:
    """A next hop as written in the config: a sip: or sips: URI without a user."""
    text = text.strip().removeprefix("<").removesuffix(">")
    try:
        uri = parse_uri_untrusted(text)
    except SipParseError as e:
        raise ValueError(f"{text!r} is not a SIP URI ({e.reason})") from None
    if not isinstance(uri, SipUri):
        raise ValueError(f"{text!r} is not a sip: or sips: URI")
    if uri.transport not in (None, "udp", "tcp", "tls"):
        raise ValueError(f"{text!r}: the proxy opens only UDP, TCP and TLS connections")
    return uri


def parse_rule(name: str, text: str) -> RouteRule:
    """``MATCH [PATTERN] -> HOP[, HOP ...]``; ValueError says what is wrong."""
    match, arrow, rest = text.partition("->")
    if not arrow:
        raise ValueError(
            "expected MATCH -> NEXT-HOP[, NEXT-HOP ...], e.g. prefix +1 -> sip:gw1.example.net"
        )
    words = match.split()
    if not words:
        raise ValueError("expected what the rule matches before ->")
    try:
        kind = MatchKind(words[0].lower())
    except ValueError:
        kinds = ", ".join(k.value for k in MatchKind)
        raise ValueError(f"unknown match {words[0]!r}; expected one of {kinds}") from None
    pattern = " ".join(words[1:])
    if kind in _NEEDS_PATTERN and not pattern:
        raise ValueError(f"{kind.value} needs a value, e.g. {kind.value} {_EXAMPLES[kind]}")
    if kind not in _NEEDS_PATTERN and pattern:
        raise ValueError(f"{kind.value} takes no value; got {pattern!r}")
    regex = None
    if kind is MatchKind.USER:
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"{pattern!r} is not a regular expression ({e})") from None
    if kind is MatchKind.DOMAIN:
        pattern = pattern.lower().rstrip(".")
    hops = tuple(parse_hop(h) for h in rest.split(",") if h.strip())
    if not hops:
        raise ValueError("expected at least one next hop after ->, e.g. sip:gw1.example.net")
    return RouteRule(name=name, kind=kind, pattern=pattern, hops=hops, regex=regex)


_EXAMPLES = MappingProxyType(
    {MatchKind.PREFIX: "+1", MatchKind.USER: "^00[1-9]", MatchKind.DOMAIN: "example.org"}
)
