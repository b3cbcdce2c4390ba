"""Hypothesis strategies for SIP messages, and the checks every property test shares.

``messages()`` builds structurally valid requests and responses, spelled every way the
grammar allows (compact and long header names, any case, folds, escapes), each with an
``Expected`` model of what it must parse to. ``parse_or_error`` parses untrusted bytes
and lets nothing but ``SipParseError`` escape. Used by tests/sip/test_properties*.py.
"""

from __future__ import annotations

import contextlib
import operator
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from random import Random

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from siptrio.sip import (
    Message,
    NameAddr,
    Request,
    Response,
    SipParseError,
    SipUri,
    error_response_untrusted,
    parse_message_untrusted,
)
from siptrio.sip._abnf import HEADER_CHARS, PARAM_CHARS, PASSWORD_CHARS, TOKEN_CHARS, USER_CHARS

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(SETTINGS, max_examples=60)


# --- helpers shared by all properties ------------------------------------------------------


def parse_or_error(data: bytes) -> Request | Response | SipParseError:
    """Parse untrusted bytes; anything but SipParseError escapes and fails the test."""
    try:
        msg = parse_message_untrusted(data)
    except SipParseError as err:
        reply = error_response_untrusted(data, err)
        assert reply is None or reply.startswith(f"SIP/2.0 {err.status} ".encode())
        return err
    touch_views(msg)
    return msg


VIEWS = (
    "vias",
    "from_",
    "to",
    "call_id",
    "cseq",
    "max_forwards",
    "contact_star",
    "contacts",
    "routes",
    "record_routes",
    "paths",
    "expires",
    "require",
    "supported",
    "proxy_require",
    "content_type",
    "content_length",
)


def touch_views(msg: Message) -> None:
    for name in VIEWS:
        with contextlib.suppress(SipParseError):
            getattr(msg, name)
    with contextlib.suppress(SipParseError):
        for na in (*msg.contacts, msg.to, msg.from_):
            for prop in ("q", "expires", "reg_id", "instance", "tag"):
                with contextlib.suppress(SipParseError):
                    getattr(na, prop)
            if isinstance(na.uri, SipUri):
                na.uri.aor()
                na.uri.key()
    if isinstance(msg, Request):
        with contextlib.suppress(SipParseError):
            msg.transaction_tag()


# --- a generator of structurally valid messages ---------------------------------------------
#
# Header values are built as byte templates in which LWS (b"\x01": at least one blank) and
# SWS (b"\x02": optional blank) mark where the grammar allows whitespace; ``render`` then
# spells each mark as blanks or a fold (CRLF + blanks).

LWS, SWS = b"\x01", b"\x02"
LWS_SPELLINGS = [b" ", b"  ", b"\t", b" \t ", b"\r\n ", b"\r\n\t", b" \r\n  "]
SWS_SPELLINGS = [b"", b"", b"", b" ", b"\t", b"\r\n "]
_MARKS = re.compile(b"[\x01\x02]")
_FOLD = re.compile(rb"[ \t]*\r\n[ \t]+")


def unfold(raw: bytes) -> bytes:
    return _FOLD.sub(b" ", raw).strip(b" \t")


def render(rnd: Random, template: bytes) -> bytes:
    """Spell each LWS / SWS mark; cosmetic choices come from one seeded Random."""
    return _MARKS.sub(
        lambda m: rnd.choice(LWS_SPELLINGS if m.group() == LWS else SWS_SPELLINGS), template
    )


def chars(alphabet: str, min_size: int = 1, max_size: int = 8) -> st.SearchStrategy[str]:
    return st.text(alphabet=sorted(alphabet), min_size=min_size, max_size=max_size)


def escaped(alphabet: frozenset[str], min_size: int = 1) -> st.SearchStrategy[str]:
    """Text from ``alphabet`` with %HH escapes (either hex case) mixed in."""

    def build(text: str, codes: list[int]) -> str:
        it = iter(codes * len(text))
        return "".join(
            (f"%{next(it):02X}" if i % 2 else f"%{next(it):02x}") if c == "\x03" else c
            for i, c in enumerate(text)
        )

    return st.builds(
        build,
        chars("".join(alphabet) + "\x03", min_size),
        st.lists(st.integers(0, 255), min_size=1, max_size=3),
    )


tokens = chars("".join(TOKEN_CHARS))
LABEL = string.ascii_letters + string.digits
labels = st.builds(operator.add, chars(LABEL, 1, 1), chars(LABEL + "-", 0, 6)).map(
    lambda s: s.rstrip("-") or "a"
)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)
ipv6_refs = st.ip_addresses(v=6).map(lambda a: f"[{a}]")
hosts = st.one_of(hostnames, st.ip_addresses(v=4).map(str), ipv6_refs)
ports = st.none() | st.integers(0, 65535)
cosmetic = st.randoms(use_true_random=True)  # one seed: cheap, and reproducible

USER_ALL = escaped(USER_CHARS)
USER_PLAIN = escaped(USER_CHARS - frozenset(";?,"))
PASSWORD_ALL = escaped(PASSWORD_CHARS, 0)
PASSWORD_PLAIN = escaped(PASSWORD_CHARS - frozenset(","), 0)
URI_PARAMS = st.lists(st.tuples(escaped(PARAM_CHARS), st.none() | escaped(PARAM_CHARS)), max_size=3)
_HNV = HEADER_CHARS - frozenset("&=")
URI_HEADERS = st.lists(st.tuples(escaped(_HNV), escaped(_HNV, 0)).map("=".join), max_size=2)
SCHEMES = st.sampled_from(["sip", "sips", "SIP", "Sips"])


@dataclass
class UriModel:
    text: str
    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...]
    headers: tuple[str, ...]

    def check(self, uri: object) -> None:
        assert isinstance(uri, SipUri)
        assert str(uri) == self.text
        assert (uri.scheme, uri.user, uri.password) == (self.scheme, self.user, self.password)
        assert (uri.host, uri.port) == (self.host, self.port)
        assert (uri.params, uri.headers) == (self.params, self.headers)


@st.composite
def sip_uris(draw: st.DrawFn, *, headers: bool = False, plain: bool = False) -> UriModel:
    """A SIP or SIPS URI; ``plain`` ones have no ';', '?' or ',' (addr-spec form)."""
    scheme = draw(SCHEMES)
    user = draw(st.none() | (USER_PLAIN if plain else USER_ALL))
    password = None
    if user is not None and draw(st.booleans()):
        password = draw(PASSWORD_PLAIN if plain else PASSWORD_ALL)
    host, port = draw(hosts), draw(ports)
    params = [] if plain else draw(URI_PARAMS)
    uri_headers = draw(URI_HEADERS) if headers and not plain else []
    text = scheme + ":"
    if user is not None:
        text += user + (f":{password}" if password is not None else "") + "@"
    text += host if port is None else f"{host}:{port}"
    text += "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)
    if uri_headers:
        text += "?" + "&".join(uri_headers)
    return UriModel(
        text, scheme.lower(), user, password, host, port, tuple(params), tuple(uri_headers)
    )


utf8_text = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"))


@st.composite
def quoted_strings(draw: st.DrawFn) -> tuple[str, str]:
    """(wire form with quotes and quoted-pairs, unquoted content)."""
    content = draw(st.text(utf8_text, max_size=12))
    escapes = draw(st.integers(0, 2**12 - 1))  # which other characters get a quoted-pair
    wire = "".join(
        "\\" + c if c in '"\\' or escapes >> (i % 12) & 1 else c for i, c in enumerate(content)
    )
    return '"' + wire + '"', content


EXTRA_PARAMS = st.lists(
    st.tuples(
        tokens.map(lambda t: "x" + t),  # never a name the grammar gives meaning to
        st.one_of(st.none(), tokens, hosts, quoted_strings().map(lambda q: q[0])),
    ),
    max_size=2,
)
Params = list[tuple[str, str | None]]


@st.composite
def gen_params(draw: st.DrawFn, fixed: Sequence[tuple[str, str | None]]) -> tuple[bytes, Params]:
    """*( SEMI generic-param ) as a template, with its (name, value-as-written) list."""
    params = draw(st.permutations([*fixed, *draw(EXTRA_PARAMS)]))
    out = b""
    for name, value in params:
        out += SWS + b";" + SWS + name.encode()
        if value is not None:
            out += SWS + b"=" + SWS + value.encode()
    return out, list(params)


@dataclass
class NameAddrModel:
    display: str | None
    uri: UriModel
    params: Params

    def check(self, na: NameAddr) -> None:
        assert na.display == self.display
        assert na.uri_text == self.uri.text
        self.uri.check(na.uri)
        assert list(na.params) == self.params


FORMS = st.sampled_from(["quoted", "token", "bare", "addr-spec"])
DISPLAY_WORDS = st.lists(tokens, min_size=1, max_size=3)


@st.composite
def name_addrs(
    draw: st.DrawFn, fixed: Sequence[tuple[str, str | None]] = (), uri_headers: bool = False
) -> tuple[bytes, NameAddrModel]:
    form = draw(FORMS)
    params_t, params = draw(gen_params(fixed))
    if form == "addr-spec":
        uri = draw(sip_uris(plain=True))
        return uri.text.encode() + params_t, NameAddrModel(None, uri, params)
    uri = draw(sip_uris(headers=uri_headers))
    bracketed = b"<" + uri.text.encode() + b">"
    if form == "bare":
        return bracketed + params_t, NameAddrModel(None, uri, params)
    if form == "quoted":
        wire, display = draw(quoted_strings())
        return wire.encode() + SWS + bracketed + params_t, NameAddrModel(display, uri, params)
    words = draw(DISPLAY_WORDS)
    template = LWS.join(w.encode() for w in words) + SWS + bracketed + params_t
    return template, NameAddrModel(" ".join(words), uri, params)


@dataclass
class ViaModel:
    transport: str
    host: str
    port: int | None
    params: Params


TRANSPORTS = st.sampled_from(["UDP", "tcp", "Tls", "SCTP", "ws", "WSS"]) | tokens
RPORTS = st.none() | st.integers(1, 65535).map(str)
RECEIVED = st.ip_addresses(v=4).map(str) | st.ip_addresses(v=6).map(str) | ipv6_refs
PORT_COLONS = st.sampled_from([b":", b" :", b"\t: ", b": "])


@st.composite
def vias(draw: st.DrawFn) -> tuple[bytes, ViaModel]:
    transport, host, port = draw(TRANSPORTS), draw(hosts), draw(ports)
    fixed: Params = [("branch", "z9hG4bK" + draw(tokens))]
    if draw(st.booleans()):
        fixed.append(("rport", draw(RPORTS)))
    if draw(st.booleans()):
        fixed.append(("received", draw(RECEIVED)))
    params_t, params = draw(gen_params(fixed))
    sent_by = host.encode()
    if port is not None:  # sent-by = host [ COLON port ], COLON = SWS ":" SWS
        sent_by += draw(PORT_COLONS) + str(port).encode()
    template = b"SIP" + SWS + b"/" + SWS + b"2.0" + SWS + b"/" + SWS + transport.encode()
    return template + LWS + sent_by + params_t, ViaModel(transport.upper(), host, port, params)


@dataclass
class Expected:
    kind: str
    method: str
    uri: UriModel | None
    status: int
    reason: str
    vias: list[ViaModel] = field(default_factory=list)
    from_: NameAddrModel | None = None
    to: NameAddrModel | None = None
    call_id: str = ""
    cseq: tuple[int, str] = (0, "")
    max_forwards: int | None = None
    contacts: list[NameAddrModel] = field(default_factory=list)
    unknown: dict[str, list[bytes]] = field(default_factory=dict)
    body: bytes = b""


def header_line(rnd: Random, long: str, short: str | None, value_template: bytes) -> bytes:
    """``Name: value`` with the name in long or compact form, in random case."""
    name = rnd.choice([long, short] if short and rnd.random() < 0.4 else [long])
    name = "".join(c.upper() if rnd.random() < 0.3 else c.lower() for c in name)
    blank = rnd.choice(["", "", " ", "\t"])  # between the name and the colon
    return (name + blank + ":").encode() + render(rnd, SWS + value_template)


unknown_words = st.binary(min_size=1, max_size=10).map(
    lambda b: bytes(c for c in b if c > 0x20 and c != 0x7F) or b"x"
)
CONTACT_PARAMS = st.lists(
    st.sampled_from(
        [
            ("expires", "3600"),
            ("q", "0.5"),
            ("+sip.instance", '"<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"'),
            ("reg-id", "1"),
        ]
    ),
    unique=True,
    max_size=3,
)
REASONS = st.text(utf8_text, max_size=20)


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, Expected]:
    rnd = draw(cosmetic)
    kind = draw(st.sampled_from(["request", "response"]))
    method = draw(tokens)
    lines: list[tuple[str, bytes, object]] = []
    if kind == "request":
        uri = draw(sip_uris())
        exp = Expected(kind, method, uri, 0, "")
        start = f"{method} {uri.text} SIP/2.0".encode()
    else:
        status, reason = draw(st.integers(100, 699)), draw(REASONS)
        exp = Expected(kind, method, None, status, reason)
        start = f"SIP/2.0 {status} {reason}".encode()

    # Via: one or more lines, each one or more comma-separated values.
    for _ in range(draw(st.integers(1, 2))):
        via_items = draw(st.lists(vias(), min_size=1, max_size=2))
        template = (SWS + b"," + SWS).join(t for t, _ in via_items)
        lines.append(("via", header_line(rnd, "Via", "v", template), via_items))
    from_t, from_m = draw(name_addrs(fixed=[("tag", draw(tokens))]))
    lines.append(("from", header_line(rnd, "From", "f", from_t), from_m))
    to_t, to_m = draw(name_addrs())
    lines.append(("to", header_line(rnd, "To", "t", to_t), to_m))
    exp.call_id = draw(tokens) + (("@" + draw(hosts)) if draw(st.booleans()) else "")
    lines.append(("call-id", header_line(rnd, "Call-ID", "i", exp.call_id.encode()), None))
    number = draw(st.integers(0, 2**32 - 1))
    exp.cseq = (number, method)
    cseq_t = (rnd.choice(["", "0", "00"]) + str(number)).encode() + LWS + method.encode()
    lines.append(("cseq", header_line(rnd, "CSeq", None, cseq_t), None))
    if draw(st.booleans()):
        exp.max_forwards = draw(st.integers(0, 255))
        mf = (rnd.choice(["", "0"]) + str(exp.max_forwards)).encode()
        lines.append(("max-forwards", header_line(rnd, "Max-Forwards", None, mf), None))
    for _ in range(draw(st.integers(0, 2))):
        count = draw(st.integers(1, 2))
        na_items = [draw(name_addrs(draw(CONTACT_PARAMS), uri_headers=True)) for _ in range(count)]
        template = (SWS + b"," + SWS).join(t for t, _ in na_items)
        lines.append(("contact", header_line(rnd, "Contact", "m", template), na_items))
    for _ in range(draw(st.integers(0, 3))):
        words = draw(st.lists(unknown_words, max_size=4))
        lines.append(
            ("unknown", header_line(rnd, "X-" + draw(tokens), None, LWS.join(words)), None)
        )
    exp.body = body = draw(st.binary(max_size=64))
    if draw(st.integers(0, 4)) > 0:  # usually; without it the body runs to the end
        cl = str(len(body)).encode()
        lines.append(("content-length", header_line(rnd, "Content-Length", "l", cl), None))
    lines = draw(st.permutations(lines))

    # What the parsed message must say, in the order the lines ended up in.
    for kind_, line, model in lines:
        if kind_ == "via":
            exp.vias.extend(m for _, m in model)  # type: ignore[attr-defined]
        elif kind_ == "contact":
            exp.contacts.extend(m for _, m in model)  # type: ignore[attr-defined]
        elif kind_ == "from":
            exp.from_ = model  # type: ignore[assignment]
        elif kind_ == "to":
            exp.to = model  # type: ignore[assignment]
        elif kind_ == "unknown":
            name, _, value = line.partition(b":")
            key = name.strip(b" \t").decode().lower()
            exp.unknown.setdefault(key, []).append(unfold(value))
    data = start + b"\r\n" + b"".join(line + b"\r\n" for _, line, _ in lines) + b"\r\n" + body
    return data, exp
