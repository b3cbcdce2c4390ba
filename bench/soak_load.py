"""bench/soak.py's load generators, each run as a process of its own by soak.py
(``--register-client``, ``--ws-client``): REGISTER refreshes over UDP, and SIP.js-shaped
WebSocket flows that REGISTER, refresh, send CRLF keep-alives and answer pings. Each
rewrites its counts (JSON) every second, for the report."""

from __future__ import annotations

import json
import random
import socket
import sys
import time
import uuid
from pathlib import Path

# The other benchmarks, next to this file (sys.path[0] when run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from calls_udp import DOMAIN

REGISTER_EXPIRES = 300
WS_EXPIRES = 600  # what ws_browser.sipjs_register asks for
WS_REFRESH = 300.0
WS_CRLF_EVERY = 30.0


# --- the REGISTER client (its own process) ------------------------------------------------


def register_client(port: int, rate: float, users: int, seconds: float, out: Path) -> int:
    """REGISTER refreshes at ``rate``/s for ``users`` AORs, round robin; counts to ``out``.

    One UDP socket, no retransmissions: an answer that never comes is counted as lost.
    The counts (JSON) are rewritten every second.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    local = sock.getsockname()[1]
    call_ids = [f"soak-reg-{i}-{uuid.uuid4().hex[:8]}" for i in range(users)]
    cseqs = [0] * users
    counts: dict[str, int] = {"sent": 0}
    started = time.monotonic()
    next_send = started
    next_dump = started + 1.0
    i = 0
    while True:
        now = time.monotonic()
        if now - started >= seconds:
            break
        while next_send <= now:
            user = i % users
            cseqs[user] += 1
            branch = f"z9hG4bK-soak-{uuid.uuid4().hex[:16]}"
            request = (
                f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch={branch};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:soak{user}@{DOMAIN}>;tag=soak{user}\r\n"
                f"To: <sip:soak{user}@{DOMAIN}>\r\n"
                f"Call-ID: {call_ids[user]}\r\n"
                f"CSeq: {cseqs[user]} REGISTER\r\n"
                f"Contact: <sip:soak{user}@127.0.0.1:{local}>\r\n"
                f"Expires: {REGISTER_EXPIRES}\r\n"
                "User-Agent: siptrio bench/soak.py\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
            try:
                sock.sendto(request, ("127.0.0.1", port))
                counts["sent"] += 1
            except OSError:
                counts["send_errors"] = counts.get("send_errors", 0) + 1
            i += 1
            next_send += 1.0 / rate
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                break
            status = data[8:11].decode(errors="replace")
            if status != "100":
                counts[status] = counts.get(status, 0) + 1
        if now >= next_dump:
            out.write_text(json.dumps(counts))
            next_dump += 1.0
        time.sleep(max(0.0, min(next_send, next_dump) - time.monotonic()))
    time.sleep(1.0)  # the last answers
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            break
        status = data[8:11].decode(errors="replace")
        if status != "100":
            counts[status] = counts.get(status, 0) + 1
    out.write_text(json.dumps(counts))
    return 0


# --- the WebSocket clients (their own process) --------------------------------------------


def ws_client(port: int, n: int, seconds: float, out: Path) -> int:
    """``n`` SIP.js-shaped flows held for ``seconds``: REGISTER, refresh, CRLF, pongs."""
    import trio
    import wsproto.events as wse
    from ws_browser import GONE, ORIGIN, Browser, raise_fd_limit

    raise_fd_limit()
    counts: dict[str, int] = {"registered": 0, "refreshed": 0, "crlf": 0, "failed": 0}
    browsers: list[Browser] = []

    async def keep(b: Browser) -> None:
        """Refresh the binding every WS_REFRESH s and send CRLF every WS_CRLF_EVERY s."""
        next_refresh = trio.current_time() + WS_REFRESH * random.uniform(0.5, 1.0)
        while True:
            await trio.sleep(WS_CRLF_EVERY * random.uniform(0.9, 1.1))
            if b.closed.is_set():
                counts["failed"] += 1
                return
            try:
                await b.send(wse.TextMessage(data="\r\n\r\n"))
                counts["crlf"] += 1
                if trio.current_time() >= next_refresh:
                    reply = await b.request(b.register())
                    if reply.startswith("SIP/2.0 200 "):
                        counts["refreshed"] += 1
                    else:
                        counts["refresh_" + reply[8:11]] = counts.get("refresh_" + reply[8:11], 0)
                        counts["refresh_" + reply[8:11]] += 1
                    next_refresh += WS_REFRESH
            except GONE:
                counts["failed"] += 1
                return

    async def open_flow(nursery: trio.Nursery, b: Browser, limiter: trio.CapacityLimiter) -> None:
        try:
            async with limiter:
                with trio.fail_after(30):
                    b.stream = await trio.open_tcp_stream("127.0.0.1", port)
                    nursery.start_soon(b.reader)
                    await b.send(
                        wse.Request(
                            host=f"127.0.0.1:{port}",
                            target="/",
                            subprotocols=["sip"],
                            extra_headers=[(b"Origin", ORIGIN)],
                        )
                    )
                    await b.accepted.wait()
                    if b.refused or b.closed.is_set():
                        counts["failed"] += 1
                        return
                    reply = await b.request(b.register())
        except GONE:
            counts["failed"] += 1
            return
        if reply.startswith("SIP/2.0 200 "):
            counts["registered"] += 1
            browsers.append(b)
            nursery.start_soon(keep, b)
        else:
            counts["failed"] += 1

    async def dump() -> None:
        while True:
            await trio.sleep(1.0)
            alive = sum(not b.closed.is_set() for b in browsers)
            pings = sum(b.pings for b in browsers)
            out.write_text(json.dumps({**counts, "alive": alive, "pings": pings}))

    async def main() -> None:
        limiter = trio.CapacityLimiter(50)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dump)
            with trio.move_on_after(seconds):
                async with trio.open_nursery() as flows:
                    for k in range(n):
                        flows.start_soon(open_flow, flows, Browser(f"soakws{k}"), limiter)
            alive = sum(not b.closed.is_set() for b in browsers)
            pings = sum(b.pings for b in browsers)
            out.write_text(json.dumps({**counts, "alive": alive, "pings": pings}))
            for b in browsers:
                if b.stream is not None:
                    await trio.aclose_forcefully(b.stream)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return 0
