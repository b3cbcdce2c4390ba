"""Server-side keep-alive timers for TCP/TLS flows, one task per flow (RFC 5626 section 4.4).

WebSocket flows share one task per listener instead (``ws.Heartbeat``).

A flow that stops answering is closed, which removes its bindings: a browser tab
that went away must stop receiving calls within interval + timeout, not when its
registration expires. CRLF keep-alives are only held against clients that have
shown they answer them (RFC 5626 makes the answer mandatory only for clients that
negotiated outbound), so a plain SIP phone that ignores CRLFCRLF is never dropped
for it.
"""

from __future__ import annotations

import logging
from collections import Counter

import trio

from .hub import Flow

__all__ = ["crlf_keepalive", "first_message_guard"]

log = logging.getLogger("siptrio.transport")


async def crlf_keepalive(flow: Flow, interval: float, timeout: float, stats: Counter[str]) -> None:
    while True:
        await trio.sleep(interval)
        expect_answer = flow.crlf_answers_seen
        answer = flow.crlf_answer = trio.Event()
        if not flow.send_nowait(b"\r\n\r\n"):
            return
        stats[f"keepalives_out.{flow.transport.value}"] += 1
        if not expect_answer:
            continue
        with trio.move_on_after(timeout):
            await answer.wait()
            continue
        stats["keepalive_failures"] += 1
        log.info("flow %s did not answer a CRLF keep-alive within %s s", flow.id, timeout)
        flow.close("keep-alive timeout (CRLF)")
        return


async def first_message_guard(flow: Flow, timeout: float, stats: Counter[str]) -> None:
    """Close a connection that sends nothing valid (slowloris, port scanners)."""
    await trio.sleep(timeout)
    if not flow.valid_seen:
        stats["flows_closed.no_valid_message"] += 1
        flow.close(f"no valid SIP message within {timeout:g} s")
