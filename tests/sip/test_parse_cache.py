"""Parsed Via, name-addr and URI values are shared per spelling, and the caches stay bounded."""

from __future__ import annotations

import pytest

from siptrio.sip import SipParseError, headers, uri
from siptrio.sip.headers import parse_name_addr, parse_via
from siptrio.sip.uri import parse_uri_untrusted


def test_same_spelling_gives_the_same_value_object() -> None:
    via = "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-cache-1;rport"
    assert parse_via(via) is parse_via(via)
    na = '"Alice" <sip:alice@127.0.0.1>;tag=cache1'
    first = parse_name_addr(na, "From")
    assert parse_name_addr(na, "To") is first
    assert first.display == "Alice" and first.tag == "cache1"
    assert parse_uri_untrusted("sip:bob@127.0.0.1:5080") is parse_uri_untrusted(
        "sip:bob@127.0.0.1:5080"
    )


def test_errors_are_not_cached_and_keep_their_context() -> None:
    for _ in range(2):
        with pytest.raises(SipParseError, match="Contact"):
            parse_name_addr("<sip:bob@127.0.0.1", "Contact")
        with pytest.raises(SipParseError, match="Route"):
            parse_name_addr("<sip:bob@127.0.0.1", "Route")


def test_a_flood_of_unique_values_does_not_grow_the_caches_past_their_bound() -> None:
    for i in range(headers.PARSED_CACHE + 100):
        parse_via(f"SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-flood-{i}")
        parse_name_addr(f"<sip:u{i}@127.0.0.1>;tag=t{i}", "From")
    assert len(headers._via_cache) <= headers.PARSED_CACHE
    assert len(headers._name_addr_cache) <= headers.PARSED_CACHE
    assert len(uri._uri_cache) <= uri.URI_CACHE
    # still correct after the clear
    assert parse_via("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-after").branch == ("z9hG4bK-after")
