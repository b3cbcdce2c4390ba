"""SIP, SIPS and tel URIs (RFC 3261 section 19.1, RFC 3966), and the rest as opaque.

A URI keeps the text it was parsed from: a proxy forwards Request-URIs and a
registrar echoes Contacts exactly as received, and re-serialising from parts would
change escapes and parameter spelling that clients compare byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from ._abnf import (
    HEADER_CHARS,
    HOSTNAME_CHARS,
    IPV6_CHARS,
    PARAM_CHARS,
    PASSWORD_CHARS,
    USER_CHARS,
    BoundedCache,
    Params,
    canonical_escapes,
    check_escapes,
    format_params,
    get_param,
    has_param,
    parse_params,
    remember,
)
from .errors import SipParseError

__all__ = ["AbsoluteUri", "SipUri", "TelUri", "Uri", "parse_uri_untrusted"]


@dataclass(kw_only=True, slots=True, unsafe_hash=True)
class SipUri:
    scheme: str  # "sip" or "sips", lower case
    user: str | None
    password: str | None
    host: str  # as written; IPv6 references keep their brackets
    port: int | None
    params: Params = ()
    headers: tuple[str, ...] = ()  # "name=value" items of the ?headers part, as written
    text: str = field(default="", compare=False)

    @property
    def host_ip(self) -> str:
        """The host without IPv6 brackets, as a socket API wants it."""
        if self.host.startswith("["):
            return self.host[1:-1]
        return self.host

    @property
    def transport(self) -> str | None:
        t = get_param(self.params, "transport")
        return t.lower() if t else None

    @property
    def lr(self) -> bool:
        return has_param(self.params, "lr")

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def aor(self) -> str:
        """Address-of-record key: scheme sip, escape-normalised user, lower-case host.

        RFC 3261 section 10.3 step 5: parameters, headers and port are dropped, and
        sips folds into sip so that one user has one set of bindings.
        """
        host = self.host.lower()
        if self.user is None:
            return f"sip:{host}"
        return f"sip:{canonical_escapes(self.user, USER_CHARS)}@{host}"

    def key(self) -> str:
        """Comparison key following RFC 3261 section 19.1.4 closely enough for bindings.

        User and password compare case-sensitively after escape normalisation; host,
        parameter names and values case-insensitively; parameter order is ignored.
        """
        user = canonical_escapes(self.user, USER_CHARS) if self.user is not None else ""
        pw = f":{canonical_escapes(self.password, PASSWORD_CHARS)}" if self.password else ""
        port = f":{self.port}" if self.port is not None else ""
        items = []
        for k, v in self.params:
            name = canonical_escapes(k, PARAM_CHARS).lower()  # ;%6C%72 is ;lr
            value = None if v is None else canonical_escapes(v, PARAM_CHARS).lower()
            items.append(name if value is None else f"{name}={value}")
        params = ";".join(sorted(items))
        headers = "&".join(sorted(self.headers))
        return f"{self.scheme}:{user}{pw}@{self.host.lower()}{port};{params}?{headers}"

    def __str__(self) -> str:
        return self.text or self.serialise()

    def serialise(self) -> str:
        userinfo = ""
        if self.user is not None:
            userinfo = self.user + (f":{self.password}" if self.password is not None else "") + "@"
        port = f":{self.port}" if self.port is not None else ""
        headers = ("?" + "&".join(self.headers)) if self.headers else ""
        return f"{self.scheme}:{userinfo}{self.host}{port}{format_params(self.params)}{headers}"

    def evolve(self, **changes: object) -> SipUri:
        """A changed copy whose text is re-serialised from the parts."""
        new = replace(self, **changes, text="")  # type: ignore[arg-type]
        return replace(new, text=new.serialise())


@dataclass(kw_only=True, slots=True, unsafe_hash=True)
class TelUri:
    number: str
    params: Params = ()
    text: str = field(default="", compare=False)
    scheme: str = "tel"

    def __str__(self) -> str:
        return self.text or f"tel:{self.number}{format_params(self.params)}"


@dataclass(kw_only=True, slots=True, unsafe_hash=True)
class AbsoluteUri:
    """Any other scheme (RFC 3261 absoluteURI): kept opaque, never routed on."""

    scheme: str
    rest: str
    text: str = field(default="", compare=False)

    def __str__(self) -> str:
        return self.text or f"{self.scheme}:{self.rest}"


Uri = SipUri | TelUri | AbsoluteUri

_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.")


_ESC = r"%[0-9A-Fa-f]{2}"
_USER_RE = rf"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|{_ESC})+"
_PASSWORD_RE = rf"(?:[A-Za-z0-9\-_.!~*'()&=+$,]|{_ESC})*"
_PARAM_RE = rf"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|{_ESC})+"
# The common SIP URI, checked in one regex pass; anything it does not match (URI
# headers, odd hosts, errors) takes the careful path below, which names the fault.
_SIP_FAST = re.compile(
    rf"(sips?):(?:({_USER_RE})(?::({_PASSWORD_RE}))?@)?"
    r"([A-Za-z0-9_][A-Za-z0-9\-_.]*|\[[0-9A-Fa-f:.]+\])"
    rf"(?::([0-9]{{1,5}}))?((?:;{_PARAM_RE}(?:={_PARAM_RE})?)*)",
    re.IGNORECASE,
)


URI_CACHE = 1024  # spellings remembered; cleared when full (see headers.PARSED_CACHE)
_uri_cache: BoundedCache[str, Uri] = BoundedCache("URIs", URI_CACHE)


def parse_uri_untrusted(text: str) -> Uri:
    """Parse one URI with no surrounding LWS or brackets; once per spelling."""
    uri = _uri_cache.get(text)
    return uri if uri is not None else remember(_uri_cache, text, _parse_uri(text))


def _parse_uri(text: str) -> Uri:
    m = _SIP_FAST.fullmatch(text)
    if m is not None:
        scheme, user, password, host, port, ptext = m.groups()
        if (port is None or int(port) <= 65535) and (not host.startswith("[") or ":" in host):
            params: Params = ()
            if ptext:
                params = tuple(
                    (name, value if eq else None)
                    for name, eq, value in (p.partition("=") for p in ptext[1:].split(";"))
                )
            return SipUri(
                scheme=scheme.lower(),
                user=user,
                password=password,
                host=host,
                port=int(port) if port is not None else None,
                params=params,
                text=text,
            )
    if not text:
        raise SipParseError("Empty URI")
    if any(c in ' \t\r\n<>"' for c in text):
        raise SipParseError(f"Illegal whitespace or delimiter in URI {text[:60]!r}")
    scheme, colon, rest = text.partition(":")
    if (
        not colon
        or not scheme
        or not scheme[0].isalpha()
        or not all(c in _SCHEME_CHARS for c in scheme)
    ):
        raise SipParseError(f"URI without a scheme: {text[:60]!r}")
    lscheme = scheme.lower()
    if lscheme in ("sip", "sips"):
        return _parse_sip(lscheme, rest, text)
    if lscheme == "tel":
        number, _, ptext = rest.partition(";")
        if not number:
            raise SipParseError("tel URI without a number")
        return TelUri(
            number=number, params=parse_params(";" + ptext, "tel URI") if ptext else (), text=text
        )
    if not rest:
        raise SipParseError(f"URI {text[:60]!r} has nothing after the scheme")
    return AbsoluteUri(scheme=lscheme, rest=rest, text=text)


def _parse_sip(scheme: str, rest: str, text: str) -> SipUri:
    user: str | None = None
    password: str | None = None
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, pw = userinfo.partition(":")
        if not user:
            raise SipParseError("SIP URI with an empty user part")
        check_escapes(user, USER_CHARS, "URI user part")
        if colon:
            check_escapes(pw, PASSWORD_CHARS, "URI password")
            password = pw
    headers: tuple[str, ...] = ()
    q = rest.find("?")
    if q >= 0:
        htext = rest[q + 1 :]
        rest = rest[:q]
        items = htext.split("&")
        for item in items:
            name, eq, _ = item.partition("=")
            if not name or not eq:
                raise SipParseError("Bad header in URI")
            check_escapes(item.replace("=", "", 1), HEADER_CHARS, "URI header")
        headers = tuple(items)
    hostport, semi, ptext = rest.partition(";")
    params: Params = ()
    if semi:
        plist: list[tuple[str, str | None]] = []
        for p in ptext.split(";"):
            name, eq, value = p.partition("=")
            if not name:
                raise SipParseError("Empty URI parameter")
            check_escapes(name, PARAM_CHARS, "URI parameter")
            if eq:
                if not value:
                    raise SipParseError(f"Empty value for URI parameter {name!r}")
                check_escapes(value, PARAM_CHARS, "URI parameter")
                plist.append((name, value))
            else:
                plist.append((name, None))
        params = tuple(plist)
    host, port = parse_hostport(hostport, "SIP URI")
    return SipUri(
        scheme=scheme,
        user=user,
        password=password,
        host=host,
        port=port,
        params=params,
        headers=headers,
        text=text,
    )


def parse_hostport(text: str, what: str) -> tuple[str, int | None]:
    """host [ ":" port ] with IPv6 references in brackets (RFC 5118)."""
    if not text:
        raise SipParseError(f"{what} without a host")
    if text[0] == "[":
        end = text.find("]")
        if end < 0:
            raise SipParseError(f"Unterminated IPv6 reference in {what}")
        host = text[: end + 1]
        inner = host[1:-1]
        if not inner or ":" not in inner or not all(c in IPV6_CHARS for c in inner):
            raise SipParseError(f"Bad IPv6 reference {host!r} in {what}")
        tail = text[end + 1 :]
        if not tail:
            return host, None
        if tail[0] != ":":
            raise SipParseError(f"Text after IPv6 reference in {what}")
        return host, _port(tail[1:], what)
    host, colon, port_text = text.partition(":")
    if not host or not all(c in HOSTNAME_CHARS for c in host):
        raise SipParseError(f"Bad host {host[:60]!r} in {what}")
    if host[0] in "-.":
        raise SipParseError(f"Bad host {host[:60]!r} in {what}")
    return host, _port(port_text, what) if colon else None


def _port(text: str, what: str) -> int:
    if not text.isdigit() or not text.isascii() or len(text) > 5 or int(text) > 65535:
        raise SipParseError(f"Bad port {text[:20]!r} in {what}")
    return int(text)
