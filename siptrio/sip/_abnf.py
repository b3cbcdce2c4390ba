"""RFC 3261 section 25 grammar pieces, each beside the rule it encodes.

Kept as character sets and small scanners rather than one big regex: SIP header
values nest quoted strings inside angle brackets inside comma lists, and a scanner
that knows those three states is both faster and easier to get right than a regex
that tries to.
"""

from __future__ import annotations

import re
from typing import TypeVar

from .errors import SipParseError

K = TypeVar("K")
V = TypeVar("V")

# alphanum = ALPHA / DIGIT
_ALPHANUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN_CHARS = frozenset(_ALPHANUM + "-.!%*_+`'~")
# mark = "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")" ; unreserved = alphanum / mark
UNRESERVED = frozenset(_ALPHANUM + "-_.!~*'()")
# user-unreserved = "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"
USER_CHARS = UNRESERVED | frozenset("&=+$,;?/")
# password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
PASSWORD_CHARS = UNRESERVED | frozenset("&=+$,")
# param-unreserved = "[" / "]" / "/" / ":" / "&" / "+" / "$"
PARAM_CHARS = UNRESERVED | frozenset("[]/:&+$")
# hnv-unreserved = "[" / "]" / "/" / "?" / ":" / "+" / "$"
HEADER_CHARS = UNRESERVED | frozenset("[]/?:+$")
# hostname = *( domainlabel "." ) toplabel [ "." ]  (underscore tolerated: seen in the wild)
HOSTNAME_CHARS = frozenset(_ALPHANUM + "-._")
# IPv6reference = "[" IPv6address "]"; lenient per RFC 5118 section 4.10 (3-colon form)
IPV6_CHARS = frozenset("0123456789abcdefABCDEF:.")
LWS = " \t"
HEXDIGITS = frozenset("0123456789abcdefABCDEF")

# Request-Line = Method SP Request-URI SP SIP-Version CRLF (exactly one SP each)
REQUEST_LINE = re.compile(rb"^([A-Za-z0-9\-.!%*_+`'~]+) ([^ \t]+) ([Ss][Ii][Pp]/[0-9]+\.[0-9]+)$")
# Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF
STATUS_LINE = re.compile(rb"^([Ss][Ii][Pp]/[0-9]+\.[0-9]+) ([0-9]+)(?: (.*))?$", re.DOTALL)
DIGITS = re.compile(r"^[0-9]+$")
# qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
QVALUE = re.compile(r"^(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)$")


_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_PARAMS_FAST = re.compile(
    r"(?:;[A-Za-z0-9\-.!%*_+`'~]+(?:=(?:[A-Za-z0-9\-.!%*_+`'~:]+|\[[0-9A-Fa-f:.]+\]))?)+"
)


class BoundedCache(dict[K, V]):
    """A cache of parsed spellings, the only state the wire layer keeps between messages.

    A plain dict to read (``get`` stays the C method on the hot path), with the bound
    ``remember`` keeps and a name that ``parse_caches()`` reports it under (for tests
    that reset them and for the operator's view of state sizes).
    """

    __slots__ = ("bound", "name")

    def __init__(self, name: str, bound: int) -> None:
        super().__init__()
        self.name = name
        self.bound = bound


def remember(cache: BoundedCache[K, V], key: K, value: V) -> V:
    """Keep ``value`` under ``key`` and return it. The caches of parsed spellings are
    bounded by emptying a full one: a flood of unique values then costs what no cache
    would, and the values that do repeat are back after one miss each."""
    if len(cache) >= cache.bound:
        cache.clear()
    cache[key] = value
    return value


def is_token(text: str) -> bool:
    return _TOKEN_RE.fullmatch(text) is not None


def check_escapes(text: str, allowed: frozenset[str], what: str) -> None:
    """Reject characters outside ``allowed`` and '%' not followed by two hex digits."""
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "%":
            if i + 2 >= n or text[i + 1] not in HEXDIGITS or text[i + 2] not in HEXDIGITS:
                raise SipParseError(f"Bad %-escape in {what}")
            i += 3
            continue
        if c not in allowed:
            raise SipParseError(f"Illegal character {c!r} in {what}")
        i += 1


def unescape(text: str) -> str:
    """%HH-decode to a str; bytes that are not UTF-8 keep their escape."""
    if "%" not in text:
        return text
    out = bytearray()
    i = 0
    raw = text.encode("utf-8")
    n = len(raw)
    while i < n:
        b = raw[i]
        if b == 0x25 and i + 2 < n:
            try:
                out.append(int(raw[i + 1 : i + 3], 16))
                i += 3
                continue
            except ValueError:
                pass
        out.append(b)
        i += 1
    return out.decode("utf-8", errors="surrogateescape")


def canonical_escapes(text: str, allowed: frozenset[str]) -> str:
    """Escape-normalise: decode %HH, then re-escape whatever is not in ``allowed``.

    Two spellings of the same user part (``%41lice`` and ``Alice``) get one form, and
    an escaped NUL stays ``%00``: unescaping never truncates (RFC 4475 escnull).
    """
    if "%" not in text:
        return text
    raw = text.encode("utf-8")
    out: list[str] = []
    i = 0
    n = len(raw)
    while i < n:
        b = raw[i]
        if b == 0x25 and i + 2 < n:
            try:
                b = int(raw[i + 1 : i + 3], 16)
                i += 3
            except ValueError:
                i += 1
        else:
            i += 1
        ch = chr(b)
        if b < 0x80 and ch in allowed and ch != "%":
            out.append(ch)
        else:
            out.append(f"%{b:02X}")
    return "".join(out)


def split_top_level(text: str, sep: str, what: str) -> list[str]:
    """Split on ``sep`` outside quoted strings and ``<...>``; LWS around parts kept.

    An unterminated quoted string or an unbalanced '<' is a parse error: guessing
    where it ends is how proxies end up forwarding a different message than they
    received (RFC 4475 quotbal).
    """
    if sep not in text:
        return [text]  # nothing to split; the parser of the element checks the quoting
    if '"' not in text and "<" not in text:
        return text.split(sep)
    parts: list[str] = []
    start = 0
    i = 0
    n = len(text)
    in_quote = False
    in_angle = False
    while i < n:
        c = text[i]
        if in_quote:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == "<" and not in_angle:
            in_angle = True
        elif c == ">" and in_angle:
            in_angle = False
        elif c == sep and not in_angle:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if in_quote:
        raise SipParseError(f"Unterminated quoted string in {what}")
    if in_angle:
        raise SipParseError(f"Unterminated <...> in {what}")
    parts.append(text[start:])
    return parts


def parse_quoted(text: str, start: int, what: str) -> tuple[str, int]:
    """Scan a quoted-string starting at ``text[start] == '"'``; return (content, end)."""
    i = start + 1
    n = len(text)
    out: list[str] = []
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 >= n:
                break
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise SipParseError(f"Unterminated quoted string in {what}")


Params = tuple[tuple[str, str | None], ...]


def parse_params(text: str, what: str) -> Params:
    """Parse ``*( SEMI generic-param )`` where ``text`` starts at the first ';'.

    generic-param = token [ EQUAL gen-value ]; gen-value = token / host /
    quoted-string. LWS is allowed around ';' and '='. Quoted values keep their
    quotes so that serialising gives back what was received. An empty parameter
    (';;') is an error (RFC 4475 badinv01).
    """
    text = text.strip(LWS)
    if not text:
        return ()
    if _PARAMS_FAST.fullmatch(text):
        # the common form: token names and values, no quotes, no LWS
        fast: list[tuple[str, str | None]] = []
        for p in text[1:].split(";"):
            name, eq, value = p.partition("=")
            fast.append((name, value if eq else None))
        return tuple(fast)
    if text[0] != ";":
        raise SipParseError(f"Unexpected text {text[:20]!r} in {what}")
    out: list[tuple[str, str | None]] = []
    for part in split_top_level(text[1:], ";", what):
        name, eq, value = part.partition("=")
        name = name.strip(LWS)
        if not is_token(name):
            raise SipParseError(f"Bad parameter {part.strip(LWS)[:40]!r} in {what}")
        if not eq:
            out.append((name, None))
            continue
        value = value.strip(LWS)
        if not value:
            raise SipParseError(f"Empty value for parameter {name!r} in {what}")
        if value[0] == '"':
            _, end = parse_quoted(value, 0, what)
            if end != len(value):
                raise SipParseError(f"Text after quoted value of {name!r} in {what}")
        elif value[0] == "[":
            if value[-1] != "]" or not all(c in IPV6_CHARS for c in value[1:-1]):
                raise SipParseError(f"Bad IPv6 reference in parameter {name!r} of {what}")
        elif not all(c in TOKEN_CHARS or c in ":[]" for c in value):
            raise SipParseError(f"Bad value for parameter {name!r} in {what}")
        out.append((name, value))
    return tuple(out)


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def get_param(params: Params, name: str) -> str | None:
    """Value of a parameter (case-insensitive name); '' when present without value."""
    lname = name.lower()
    for k, v in params:
        if k.lower() == lname:
            return "" if v is None else v
    return None


def has_param(params: Params, name: str) -> bool:
    lname = name.lower()
    return any(k.lower() == lname for k, _ in params)


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        content, _ = parse_quoted(value, 0, "parameter")
        return content
    return value


def parse_uint(text: str, what: str, maximum: int = 2**32 - 1, *, clamp: bool = False) -> int:
    """A decimal number; above ``maximum`` it is an error, or ``maximum`` when ``clamp``.

    Clamping is for delta-seconds, where RFC 3261 section 25.1 says a value above
    2**32-1 means 2**32-1; counters like CSeq must instead be rejected (RFC 4475
    scalar02).
    """
    if text.isdigit() and text.isascii() and len(text) < 10:
        value = int(text)  # the common case: plain digits, nothing around them
        if value <= maximum:
            return value
    text = text.strip(LWS)
    if not DIGITS.match(text) or len(text) > 256:
        raise SipParseError(f"{what} is not a number")
    value = int(text)
    if value > maximum:
        if clamp:
            return maximum
        raise SipParseError(f"{what} out of range")
    return value
