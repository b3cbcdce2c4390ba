"""Parsed values and header lines are shared per spelling, edits keep what they can, caches stay bounded."""

from __future__ import annotations

import pytest

from siptrio.sip import Request, SipParseError, parse_message_untrusted
from siptrio.sip.caches import parse_caches
from siptrio.sip.headers import parse_name_addr, parse_via
from siptrio.sip.message import HeaderField
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
    caches = parse_caches()
    for i in range(caches["Via"].bound + 100):
        parse_via(f"SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-flood-{i}")
        parse_name_addr(f"<sip:u{i}@127.0.0.1>;tag=t{i}", "From")
    for name in ("Via", "name-addr", "URIs"):
        assert 0 < len(caches[name]) <= caches[name].bound, name
    # still correct after the clear
    assert parse_via("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-after").branch == ("z9hG4bK-after")


def _parsed(text: str) -> Request:
    m = parse_message_untrusted(text.replace("\n", "\r\n").encode())
    assert isinstance(m, Request)
    return m


def _options(branch: str, max_forwards: int = 70) -> str:
    return (
        "OPTIONS sip:bob@127.0.0.1 SIP/2.0\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{branch}\n"
        f"Max-Forwards: {max_forwards}\n"
        "From: <sip:alice@127.0.0.1>;tag=a1\nTo: <sip:bob@127.0.0.1>\n"
        f"Call-ID: {branch}\nCSeq: 1 OPTIONS\nUser-Agent: cache test\nContent-Length: 0\n\n"
    )


def test_repeated_header_lines_are_shared_and_edits_never_reach_the_other_message() -> None:
    a, b = _parsed(_options("line-1")), _parsed(_options("line-2"))
    ua_a = next(h for h in a.headers if h.name == "user-agent")
    assert ua_a is next(h for h in b.headers if h.name == "user-agent")
    # lines naming one transaction are not kept: they would only evict the others
    assert not any(h.name == "via" for h in parse_caches()["header lines"].values())
    edited = a.set("user-agent", "changed").set("max-forwards", "9")
    assert edited.user_agent == "changed" and edited.max_forwards == 9
    assert a.user_agent == b.user_agent == "cache test" and a.max_forwards == 70
    assert _parsed(_options("line-3", 69)).max_forwards == 69


def test_a_flood_of_unique_header_lines_stays_within_the_line_cache_bound() -> None:
    lines = parse_caches()["header lines"]
    for i in range(lines.bound + 50):
        _parsed(_options(f"flood-{i}").replace("cache test", f"agent {i}"))
    assert 0 < len(lines) <= lines.bound


def test_an_edit_keeps_the_views_of_the_headers_it_did_not_touch() -> None:
    req = _parsed(_options("views-1"))
    from_, cseq = req.from_, req.cseq
    new = HeaderField.make("via", "SIP/2.0/UDP 127.0.0.2:5070;branch=z9hG4bK-views-2")
    headers = tuple(new if h.name == "via" else h for h in req.headers)
    copy = req.edited(headers, ("via",))
    assert copy.from_ is from_ and copy.cseq is cseq  # kept, not parsed again
    assert copy.top_via.host == "127.0.0.2" and req.top_via.host == "127.0.0.1"
    assert copy.raw_values("via") == [new.value] and copy.has("user-agent")
