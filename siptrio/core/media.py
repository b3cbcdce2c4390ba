"""Media bridging decisions for rtpengine (its "ng" control protocol), sans-IO.

A browser speaks ICE + DTLS-SRTP (``UDP/TLS/RTP/SAVPF``, rtcp-mux); a desk phone
speaks plain RTP (``RTP/AVP``) and refuses a WebRTC offer. When a call crosses
between the two, every SDP on its way is handed to rtpengine, which rewrites it
for the leg it is going to and relays the media. This module decides *whether* a
call is bridged and *what* to ask; the Trio layer (transport/rtpengine.py) speaks
the protocol. The flags are the ones ../shared/CLIENTS.md found to work with
Chromium: without ``DTLS-reverse=passive`` the browser never completes DTLS.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .types import Peer, Transport

__all__ = [
    "MediaConfig",
    "MediaMode",
    "answer_command",
    "delete_command",
    "has_sdp",
    "is_webrtc",
    "offer_command",
    "query_command",
    "should_bridge",
    "summarize_query",
]


class MediaMode(enum.Enum):
    AUTO = "auto"  # bridge only calls with WebRTC on one side and plain RTP on the other
    ALWAYS = "always"
    NEVER = "never"


@dataclass(frozen=True, kw_only=True)
class MediaConfig:
    enabled: bool = False  # an rtpengine is configured
    mode: MediaMode = MediaMode.AUTO
    fail_open: bool = False  # rtpengine failing: pass the SDP untouched instead of 503


_REPLACE = ("origin", "session-connection")

# Towards a plain RTP device: strip ICE, no DTLS, demultiplex RTCP; let the browser
# leg keep its DTLS role passive so rtpengine does not start DTLS too early.
TO_PLAIN: MappingProxyType[str, Any] = MappingProxyType(
    {
        "ICE": "remove",
        "DTLS": "off",
        "DTLS-reverse": "passive",
        "transport-protocol": "RTP/AVP",
        "rtcp-mux": ("demux",),
        "replace": _REPLACE,
    }
)
# Towards a browser: ICE, DTLS-SRTP, no SDES crypto lines, rtcp-mux required.
TO_WEBRTC: MappingProxyType[str, Any] = MappingProxyType(
    {
        "ICE": "force",
        "DTLS": "passive",
        "transport-protocol": "UDP/TLS/RTP/SAVPF",
        "SDES": ("off",),
        "rtcp-mux": ("require",),
        "replace": _REPLACE,
    }
)


def is_webrtc(peer: Peer) -> bool:
    return peer.transport in (Transport.WS, Transport.WSS)


def should_bridge(config: MediaConfig, a: Peer, b: Peer) -> bool:
    if not config.enabled or config.mode is MediaMode.NEVER:
        return False
    if config.mode is MediaMode.ALWAYS:
        return True
    return is_webrtc(a) != is_webrtc(b)


def _flags(towards: Peer) -> dict[str, Any]:
    """A fresh copy of the flags for one command (lists, as rtpengine's bencode has them)."""
    base = TO_WEBRTC if is_webrtc(towards) else TO_PLAIN
    return {k: list(v) if isinstance(v, tuple | list) else v for k, v in base.items()}


def offer_command(
    *, call_id: str, from_tag: str, via_branch: str | None, sdp: bytes, towards: Peer
) -> dict[str, Any]:
    """``from_tag`` is the offerer's tag (the caller's, or the callee's for a late offer)."""
    cmd: dict[str, Any] = {"command": "offer", "call-id": call_id, "from-tag": from_tag, "sdp": sdp}
    if via_branch:
        cmd["via-branch"] = via_branch
    cmd.update(_flags(towards))
    return cmd


def answer_command(
    *,
    call_id: str,
    from_tag: str,
    to_tag: str,
    via_branch: str | None,
    sdp: bytes,
    towards: Peer,
) -> dict[str, Any]:
    """``from_tag`` is the offerer's, ``to_tag`` the answerer's; ``towards`` the offerer."""
    cmd: dict[str, Any] = {
        "command": "answer",
        "call-id": call_id,
        "from-tag": from_tag,
        "to-tag": to_tag,
        "sdp": sdp,
    }
    if via_branch:
        cmd["via-branch"] = via_branch
    cmd.update(_flags(towards))
    return cmd


def delete_command(
    *, call_id: str, from_tag: str, to_tag: str | None = None, via_branch: str | None = None
) -> dict[str, Any]:
    """The whole call, or one forked branch of it (``via_branch``)."""
    cmd: dict[str, Any] = {
        "command": "delete",
        "call-id": call_id,
        "from-tag": from_tag,
        "delete-delay": 0,
    }
    if to_tag:
        cmd["to-tag"] = to_tag
    if via_branch:
        cmd["via-branch"] = via_branch
    return cmd


def query_command(call_id: str) -> dict[str, Any]:
    return {"command": "query", "call-id": call_id}


def has_sdp(content_type: str | None, body: bytes) -> bool:
    return bool(body) and (content_type or "").split(";")[0].strip().lower() == "application/sdp"


def summarize_query(reply: dict[str, Any], caller_tag: str, callee_tag: str) -> dict[str, Any]:
    """Packets and bytes rtpengine received from each side (RTP streams only).

    rtpengine's ``query`` counts what arrived on each leg; what it sent on is what
    arrived on the other.
    """

    def received(tag: str) -> dict[str, int]:
        packets = bytes_ = 0
        for media in (reply.get("tags") or {}).get(tag, {}).get("medias") or []:
            for stream in media.get("streams") or []:
                if "RTP" in (stream.get("flags") or []):
                    stats = stream.get("stats") or {}
                    packets += int(stats.get("packets", 0))
                    bytes_ += int(stats.get("bytes", 0))
        return {"packets": packets, "bytes": bytes_}

    return {"from_caller": received(caller_tag), "from_callee": received(callee_tag)}
