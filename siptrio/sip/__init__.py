"""The sans-IO SIP message layer: parsing, serialising, URIs, headers and framing.

Nothing in this package does I/O or reads a clock: it never imports trio, socket,
ssl or time (tests/sip/test_sans_io.py enforces it).
"""

from __future__ import annotations

from .errors import SipParseError
from .framing import KeepAlive, StreamFramer
from .headers import CSeq, NameAddr, Via, parse_name_addr, parse_via
from .message import (
    HeaderField,
    LazyRequest,
    Message,
    Request,
    Response,
    make_response,
    reason_phrase,
)
from .parser import error_response_untrusted, parse_message_untrusted
from .uri import AbsoluteUri, SipUri, TelUri, Uri, parse_uri_untrusted

__all__ = [
    "AbsoluteUri",
    "CSeq",
    "HeaderField",
    "KeepAlive",
    "LazyRequest",
    "Message",
    "NameAddr",
    "Request",
    "Response",
    "SipParseError",
    "SipUri",
    "StreamFramer",
    "TelUri",
    "Uri",
    "Via",
    "error_response_untrusted",
    "make_response",
    "parse_message_untrusted",
    "parse_name_addr",
    "parse_uri_untrusted",
    "parse_via",
    "reason_phrase",
]
