"""The offers the simulated client makes: a desk phone's, and a browser's."""

from __future__ import annotations

__all__ = ["PLAIN_SDP", "WEBRTC_SDP"]

PLAIN_SDP = (
    "v=0\r\n"
    "o=siptrio 1 1 IN IP4 127.0.0.1\r\n"
    "s=siptrio simulated call\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\n"
    "m=audio 40000 RTP/AVP 0 8 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=sendrecv\r\n"
)

# A WebRTC-shaped offer (ICE, DTLS fingerprint, SAVPF, rtcp-mux): browsers refuse
# a plain RTP/AVP offer outright, but accept this one and answer it.
WEBRTC_SDP = (
    "v=0\r\n"
    "o=siptrio 1 1 IN IP4 127.0.0.1\r\n"
    "s=siptrio simulated call\r\n"
    "t=0 0\r\n"
    "a=group:BUNDLE 0\r\n"
    "a=msid-semantic: WMS\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "a=rtcp:9 IN IP4 0.0.0.0\r\n"
    "a=candidate:1 1 udp 2113937151 127.0.0.1 40000 typ host\r\n"
    "a=ice-ufrag:sTrI\r\n"
    "a=ice-pwd:siptriosimulatedcallpwd0\r\n"
    "a=fingerprint:sha-256 "
    "7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\r\n"
    "a=setup:actpass\r\n"
    "a=mid:0\r\n"
    "a=sendrecv\r\n"
    "a=rtcp-mux\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
)
