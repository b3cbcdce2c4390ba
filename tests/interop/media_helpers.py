"""What tests/interop/test_browser_media.py reads and writes: a PCMU tone, SDP, audio counts."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

from browser import Phone, Siptrio, wait_for

TONE_FILE = "pcmu-tone.ulaw"  # the name examples/sipp/uas-rtp.xml and uac-rtp.xml stream


def ulaw(sample: int) -> int:
    """One 16-bit linear sample as G.711 mu-law (PCMU): sign, 3-bit segment, 4-bit step."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84  # clip, add the bias
    segment = max(0, min(7, magnitude.bit_length() - 8))
    step = (magnitude >> (segment + 3)) & 0x0F
    return ~(sign | (segment << 4) | step) & 0xFF


def write_pcmu_tone(directory: Path, seconds: float = 1.0, hz: float = 440.0) -> Path:
    """Raw 8 kHz PCMU of a sine (what SIPp's rtp_stream sends, 160 bytes per 20 ms)."""
    n = int(8000 * seconds)
    path = directory / TONE_FILE
    path.write_bytes(
        bytes(ulaw(round(8000 * math.sin(2 * math.pi * hz * i / 8000))) for i in range(n))
    )
    return path


# --- SDP ------------------------------------------------------------------------------------


def body(message: str) -> str:
    """The body of a traced message (LF or CRLF line ends), trailing blank lines dropped."""
    text = message.replace("\r\n", "\n")
    return text.split("\n\n", 1)[1].strip() if "\n\n" in text else ""


def audio_port(sdp: str) -> int:
    m = re.search(r"^m=audio (\d+) ", sdp, re.M)
    assert m, f"no m=audio line in\n{sdp}"
    return int(m.group(1))


def candidate_ports(sdp: str) -> list[int]:
    """The ports of the a=candidate lines (foundation component transport priority ip port)."""
    return [
        int(m.group(1)) for m in re.finditer(r"^a=candidate:\S+ \d+ \S+ \d+ \S+ (\d+) ", sdp, re.M)
    ]


def is_webrtc_sdp(sdp: str) -> bool:
    return (
        "UDP/TLS/RTP/SAVPF" in sdp
        and "a=ice-ufrag:" in sdp
        and "a=ice-pwd:" in sdp
        and "a=fingerprint:" in sdp
    )


def is_plain_sdp(sdp: str) -> bool:
    return (
        " RTP/AVP " in sdp
        and "SAVP" not in sdp
        and "a=ice-" not in sdp
        and "a=fingerprint" not in sdp
        and "a=candidate" not in sdp
        and "a=crypto" not in sdp
    )


# --- audio ---------------------------------------------------------------------------------


def inbound_audio_grows(phone: Phone, report: Any, over: float = 2.0) -> tuple[int, int]:
    """The browser's inbound-rtp audio ``packetsReceived``: once above 0, and ``over``
    seconds later; asserts it grew by at least 20 packets a second (PCMU is 50).
    ``report()`` adds what else to show on failure (rtpengine's log, SIPp's trace)."""

    def received() -> int:
        pc = phone.peer_connection()
        return int(pc["packetsReceived"]) if pc else 0

    def why() -> str:
        return (
            f"audio at {phone.user}: {phone.peer_connection()}\n"
            f"console:\n{phone.console_text()[-4000:]}\n{report()}"
        )

    first = wait_for(received, 10, why, interval=0.2)
    time.sleep(over)
    second = received()
    assert second - first >= 20 * over, f"{first} -> {second} in {over} s\n{why()}"
    return first, second


def media_both_ways(server: Siptrio, dialog_id: str, report: Any) -> dict[str, Any]:
    """``GET /dialogs/{id}/media`` once rtpengine has received RTP from both sides."""

    def check() -> dict[str, Any] | None:
        media = server.get(f"/dialogs/{dialog_id}/media")
        if media.get("error"):
            return None
        if media["from_caller"]["packets"] > 0 and media["from_callee"]["packets"] > 0:
            return dict(media)
        return None

    return wait_for(
        check,
        10,
        lambda: f"packets both ways: {server.get(f'/dialogs/{dialog_id}/media')}\n{report()}",
        interval=0.2,
    )


def dialog_by_call_id(server: Siptrio, call_id: str, state: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        found = server.dialogs(call_id)
        return found[0] if found and found[0]["state"] == state else None

    return wait_for(find, 10, lambda: f"dialog {call_id} {state}: {server.dialogs(call_id)}")


def new_dialog(server: Siptrio, known: set[str], caller: str, state: str) -> dict[str, Any]:
    """The first dialog not in ``known`` from ``caller``, once in ``state``."""

    def find() -> dict[str, Any] | None:
        for d in server.dialogs():
            if d["id"] not in known and d["caller"] == caller and d["state"] == state:
                return dict(d)
        return None

    return wait_for(find, 10, lambda: f"a new {state} dialog from {caller}: {server.dialogs()}")
