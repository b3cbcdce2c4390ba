"""Bytes to messages, and the best-effort error reply when that fails.

``parse_message_untrusted`` frames by Content-Length, splits header lines (folding,
compact forms, case), and validates eagerly only what every message needs to be
routed and answered: the start line, Via, From, To, Call-ID, CSeq, Max-Forwards and
Content-Length. Everything else is parsed when someone asks.
"""

from __future__ import annotations

import re

from ._abnf import REQUEST_LINE, STATUS_LINE, BoundedCache, remember
from .errors import SipParseError
from .headers import canonical_name
from .message import PER_TRANSACTION, HeaderField, Request, Response, _text, index_of
from .uri import SipUri, parse_uri_untrusted

__all__ = ["DEFAULT_MAX_HEADERS", "error_response_untrusted", "parse_message_untrusted"]

DEFAULT_MAX_HEADERS = 256
_VIA_START = re.compile(rb"^SIP/[0-9]+\.[0-9]+/[A-Za-z]", re.IGNORECASE)
_TOKEN_NAME = re.compile(rb"[A-Za-z0-9\-.!%*_+`'~]+")


def _split_head(data: bytes) -> tuple[bytes, int]:
    """Header section (without the blank line) and the offset where the body starts."""
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end >= 0:
        return data[start:end], end + 4
    # A datagram whose header section runs to its very end without the blank line
    # (RFC 4475 baddn as printed in the RFC) is still readable.
    if data.endswith(b"\r\n") and len(data) > start + 2:
        return data[start:-2], len(data)
    raise SipParseError("Incomplete message: no empty line after the header section")


_valid_names: BoundedCache[bytes, str] = BoundedCache("valid names", 4096)  # raw -> canonical


def _name(raw_name: bytes) -> str:
    """Canonical name of a raw header name; validated once per spelling, then cached."""
    name = _valid_names.get(raw_name)
    if name is not None:
        return name
    if not _TOKEN_NAME.fullmatch(raw_name):
        raise SipParseError("Malformed header name")
    name = canonical_name(raw_name)
    if len(_valid_names) < _valid_names.bound:
        _valid_names[raw_name] = name
    return name


# Header lines that repeat byte for byte across messages (Max-Forwards: 70,
# Content-Type, a phone's Contact and User-Agent ...) are split once and their
# HeaderField shared; lines that name one transaction or dialog (PER_TRANSACTION) are
# not kept, they would only push the repeating ones out. Bounded by clearing.
LINE_CACHE = 1024
_line_cache: BoundedCache[bytes, HeaderField] = BoundedCache("header lines", LINE_CACHE)

Index = dict[str, tuple[bytes, ...]]  # tuples: the cyclic GC stops tracking them


def _header_lines(lines: list[bytes], max_headers: int) -> tuple[list[HeaderField], Index]:
    """Header fields and the index of values by name, in one pass."""
    if len(lines) > max_headers:
        raise SipParseError(f"Too many header fields (limit {max_headers})")
    headers: list[HeaderField] = []
    append = headers.append
    index: Index = {}
    cached = _line_cache.get
    for line in lines:
        h = cached(line)
        if h is None:
            # The common case, no folding: one line, one header, no joins.
            if not line or line[0] in (0x20, 0x09):
                return _header_lines_folded(lines, max_headers)
            raw_name, colon, value = line.partition(b":")
            if not colon or not raw_name:
                raise SipParseError("Header line without a colon")
            h = HeaderField(_name(raw_name.rstrip(b" \t")), line, value.strip(b" \t"))
            if h.name not in PER_TRANSACTION:
                remember(_line_cache, line, h)
        append(h)
        found = index.get(h.name)
        index[h.name] = (h.value,) if found is None else (*found, h.value)
    return headers, index


def _header_lines_folded(lines: list[bytes], max_headers: int) -> tuple[list[HeaderField], Index]:
    headers: list[HeaderField] = []
    name: str | None = None
    raw_parts: list[bytes] = []
    value_parts: list[bytes] = []

    def flush() -> None:
        if name is not None:
            value = b" ".join(value_parts).strip(b" \t")
            headers.append(HeaderField(name, b"\r\n".join(raw_parts), value))

    for line in lines:
        if not line:
            raise SipParseError("Empty line inside the header section")
        if line[0] in (0x20, 0x09):
            if name is None:
                raise SipParseError("Continuation line before the first header")
            raw_parts.append(line)
            value_parts.append(line.strip(b" \t"))
            continue
        flush()
        colon = line.find(b":")
        if colon <= 0:
            raise SipParseError("Header line without a colon")
        name = _name(line[:colon].rstrip(b" \t"))
        raw_parts = [line]
        value_parts = [line[colon + 1 :].strip(b" \t")]
        if len(headers) >= max_headers:
            raise SipParseError(f"Too many header fields (limit {max_headers})")
    flush()
    return headers, index_of(headers)


def _check_controls(head: bytes) -> None:
    """CR, LF and NUL may not appear raw in a header section.

    NUL is legal only as a quoted-pair inside a quoted string (RFC 4475 intmeth);
    anything else is how header injection and C-string truncation bugs start.
    """
    pairs = head.count(b"\r\n")  # counting is three scans and no copies
    if head.count(b"\r") != pairs or head.count(b"\n") != pairs:
        raise SipParseError("Bare CR or LF in the header section")
    pos = head.find(b"\x00")
    while pos >= 0:
        # A quoted-pair needs an odd run of backslashes: in '\\' NUL the NUL is raw.
        start = pos
        while start > 0 and head[start - 1] == 0x5C:  # backslash
            start -= 1
        if (pos - start) % 2 == 0:
            raise SipParseError("NUL byte in the header section")
        pos = head.find(b"\x00", pos + 1)


def parse_message_untrusted(
    data: bytes,
    *,
    max_size: int = 65535,
    max_headers: int = DEFAULT_MAX_HEADERS,
) -> Request | Response:
    """Parse one message: a whole datagram, WebSocket message, or framed stream message.

    Bytes after Content-Length are ignored (RFC 4475 dblreq over UDP); without
    Content-Length the body runs to the end of ``data`` (allowed on UDP and
    WebSocket; the stream framer insists on it before calling this).
    """
    if len(data) > max_size:
        raise SipParseError(f"Message Too Large (limit {max_size} bytes)", status=413)
    head, body_start = _split_head(data)
    _check_controls(head)
    lines = head.split(b"\r\n")
    start = lines[0]
    fields, index = _header_lines(lines[1:], max_headers)
    headers = tuple(fields)

    lengths = index.get("content-length")
    length: int | None = None
    if lengths:
        if any(v != lengths[0] for v in lengths[1:]):
            raise SipParseError("Conflicting Content-Length values", close=True)
        text = lengths[0].strip(b" \t")
        if text.startswith(b"-"):
            raise SipParseError("Negative Content-Length", close=True)
        if not text.isdigit() or len(text) > 10:
            raise SipParseError("Malformed Content-Length", close=True)
        length = int(text)
    if length is None:
        body = data[body_start:]
    else:
        if body_start + length > len(data):
            raise SipParseError("Content-Length larger than the message")
        body = data[body_start : body_start + length]

    if start.startswith(b"SIP/") or start.startswith(b"sip/"):
        return _response(start, headers, index, body)
    return _request(start, headers, index, body)


def _response(
    start: bytes, headers: tuple[HeaderField, ...], index: Index, body: bytes
) -> Response:
    m = STATUS_LINE.match(start)
    if not m:
        raise SipParseError("Malformed Status-Line")
    if m.group(1).upper() != b"SIP/2.0":
        raise SipParseError("SIP version not supported", status=505)
    code = m.group(2)
    if len(code) != 3 or not (b"100" <= code <= b"699"):
        raise SipParseError("Bad status code")
    reason = _text(m.group(3) or b"", "Reason-Phrase")
    resp = Response(headers=headers, body=body, status=int(code), reason=reason)
    resp.__dict__["_index"] = index  # what the lazy view would build, built already
    resp.vias  # noqa: B018 - eager validation of what response routing needs
    resp.cseq  # noqa: B018
    resp.call_id  # noqa: B018
    return resp


def _request(start: bytes, headers: tuple[HeaderField, ...], index: Index, body: bytes) -> Request:
    m = REQUEST_LINE.match(start)
    if not m:
        raise SipParseError("Malformed Request-Line")
    if m.group(3).upper() != b"SIP/2.0":
        raise SipParseError("SIP Version Not Supported", status=505)
    method = m.group(1).decode("ascii")
    uri_text = _text(m.group(2), "Request-URI")
    uri = parse_uri_untrusted(uri_text)
    if isinstance(uri, SipUri) and uri.headers:
        raise SipParseError("Headers are not allowed in the Request-URI")
    req = Request(headers=headers, body=body, method=method, uri=uri, uri_text=uri_text)
    req.__dict__["_index"] = index  # what the lazy view would build, built already
    req.vias  # noqa: B018 - eager validation of what every request needs
    req.from_  # noqa: B018
    req.to  # noqa: B018
    req.call_id  # noqa: B018
    if req.cseq.method != method:
        raise SipParseError("CSeq method does not match the Request-Line")
    req.max_forwards  # noqa: B018
    return req


def error_response_untrusted(
    data: bytes, error: SipParseError, *, server: str | None = None
) -> bytes | None:
    """The error response for an unparseable request, when one can be addressed.

    A reply needs a request start line, at least one Via that looks like
    ``SIP/<version>/<transport>`` and a CSeq: that is what the sender matches an
    answer with. From, To and Call-ID are copied when present (RFC 4475 insuf: an
    answer tells the sender more than silence). Responses and ACKs never get one.
    """
    try:
        head, _ = _split_head(data)
    except SipParseError:
        head = data[:65535]
    lines = head.split(b"\r\n")
    while lines and not lines[0]:
        lines.pop(0)
    if not lines:
        return None
    start = lines[0]
    if start[:4].upper() == b"SIP/" or not start[:1].isalpha():
        return None
    if start.split(b" ", 1)[0] == b"ACK":
        return None
    copied: list[bytes] = []
    have_via = False
    current: list[bytes] | None = None
    entries: list[tuple[str, list[bytes]]] = []
    for line in lines[1:200]:
        if line[:1] in (b" ", b"\t") and current is not None:
            current.append(line)
            continue
        colon = line.find(b":")
        if colon <= 0:
            current = None
            continue
        name = canonical_name(line[:colon].strip(b" \t"))
        current = [line]
        entries.append((name, current))
    seen: set[str] = set()
    for name, parts in entries:
        if b"\x00" in b"".join(parts) or any(b"\r" in p or b"\n" in p for p in parts):
            continue
        if name == "via":
            value = b" ".join(p.strip(b" \t") for p in parts).split(b":", 1)[1]
            if _VIA_START.match(value.replace(b" ", b"").replace(b"\t", b"")):
                have_via = True
                copied.append(b"\r\n".join(parts))
        elif name in ("from", "to", "call-id", "cseq") and name not in seen:
            seen.add(name)
            if name == "cseq" and b"ACK" in parts[0].split(b":", 1)[1].split():
                return None
            copied.append(b"\r\n".join(parts))
    if not have_via or "cseq" not in seen:
        return None  # without Via and CSeq the sender could not match the answer anyway
    reason = "".join(c if 32 <= ord(c) < 127 else "?" for c in error.reason)[:200]
    out = [f"SIP/2.0 {error.status} {reason}".encode()]
    out.extend(copied)
    for k, v in error.extra_headers:
        out.append(f"{k}: {v}".encode())
    if server:
        out.append(f"Server: {server}".encode())
    out.append(b"Content-Length: 0")
    return b"\r\n".join(out) + b"\r\n\r\n"
